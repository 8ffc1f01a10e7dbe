"""Summaries for people: the Prefect evaluation artifact, UI hints, counts without dict reprs."""

from pipeline.summary import evaluation_markdown, ui_hint
from pipeline.validate import counts_text


def test_the_prefect_evaluation_artifact_has_no_broken_images_and_says_where_the_figures_are(tmp_path):
    report = tmp_path / "report.md"
    report.write_text(
        "# Evaluation\n\n| metric | test |\n|---|---|\n| accuracy | 0.9 |\n\n"
        "![confusion_matrix](confusion_matrix.png)\n![roc_pr](roc_pr.png)\n"
    )
    text = evaluation_markdown(report, "abc123", "sqlite:////p/mlflow/mlflow.db")
    assert "![" not in text
    assert "| accuracy | 0.9 |" in text
    assert text.rstrip().endswith(
        "2 figures (confusion matrix, ROC/PR, reliability, training curves, Grad-CAM "
        "overlays) are in MLflow run `abc123`, artifacts `evaluation/`: mlflow ui "
        "--backend-store-uri sqlite:////p/mlflow/mlflow.db   (or: make mlflow-ui)"
    )


def test_ui_hints_and_counts():
    assert ui_hint("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"
    assert counts_text({"normal": 409, "nodule": 133}) == "normal 409, nodule 133"
    assert counts_text({}) == "none"
