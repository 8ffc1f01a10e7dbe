"""Summaries for people: the Prefect evaluation artifact, UI hints, counts without dict reprs."""

from pipeline.summary import evaluation_markdown, run_page, ui_hint
from pipeline.validate import counts_text


def test_the_prefect_evaluation_artifact_embeds_its_figures_and_says_where_the_others_are(tmp_path):
    import cv2
    import numpy as np

    for name in ("confusion_matrix.png", "roc_pr.png", "gradcam/a_correct_x.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / name), np.full((8, 8), 128, np.uint8))
    report = tmp_path / "report.md"
    report.write_text(
        "# Evaluation\n\n| metric | test |\n|---|---|\n| accuracy | 0.9 |\n\n"
        "![confusion_matrix](confusion_matrix.png)\n![roc_pr](roc_pr.png)\n![a_correct_x](gradcam/a_correct_x.png)\n"
    )
    text = evaluation_markdown(report, "abc123", "sqlite:////p/mlflow/mlflow.db")
    assert "| accuracy | 0.9 |" in text
    assert text.count("](data:image/png;base64,") == 2  # Prefect's UI renders them; relative links would break
    assert ".png)" not in text
    assert text.rstrip().endswith(
        "1 more figure(s) (Grad-CAM overlays), and all figures as files, are in MLflow run `abc123`, artifacts "
        "`evaluation/`: mlflow ui --backend-store-uri sqlite:////p/mlflow/mlflow.db   (or: make mlflow-ui)"
    )


def test_ui_hints_and_counts():
    assert ui_hint("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"
    assert counts_text({"normal": 409, "nodule": 133}) == "normal 409, nodule 133"
    assert counts_text({}) == "none"


def test_the_artifact_links_the_run_page_when_there_is_one(tmp_path):
    import mlflow

    report = tmp_path / "report.md"
    report.write_text("# Evaluation\n")
    page = "http://127.0.0.1:5000/#/experiments/1/runs/abc123"
    assert f"in MLflow run [`abc123`]({page}), artifacts" in evaluation_markdown(report, "abc123", "sqlite:///x", page)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = mlflow.MlflowClient(tracking_uri=uri).create_experiment("medpipe")
    run = mlflow.MlflowClient(tracking_uri=uri).create_run(experiment).info.run_id
    assert run_page(uri, run) == f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run}"
    assert run_page(uri, "0" * 32) is None  # no such run
    assert run_page("databricks", run) is None
