import pytest
from sklearn import metrics as skm

from pipeline.metrics import classification_metrics, per_class_metrics
from pipeline.plots import plot_confusion


def test_per_class_and_confusion_plot(tmp_path, multiclass):
    y, proba = multiclass
    pred = proba.argmax(axis=1)
    per = per_class_metrics(y, pred, ["a", "b", "c"])
    assert per["recall_b"] == pytest.approx(skm.recall_score(y, pred, average=None)[1])
    assert per["support_c"] == (y == 2).sum()
    png = plot_confusion(y, pred, ["a", "b", "c"], tmp_path / "cm.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert png.stat().st_size > 5000


def test_figures_and_report(tmp_path, multiclass):
    from pipeline import plots
    from pipeline.evaluate import write_report
    from pipeline.metrics import bootstrap_ci, per_class_metrics

    y, proba = multiclass
    figures = [
        plots.roc_pr_curves(y, proba, ["a", "b", "c"], tmp_path / "roc.png"),
        plots.reliability(y, proba, 10, tmp_path / "rel.png"),
        plots.training_curves(
            {"loss": [1, 0.5], "val_loss": [1.1, 0.7], "val_roc_auc": [0.6, 0.8]}, tmp_path / "curves.png"
        ),
    ]
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in figures)
    m = {f"{s}_{k}": v for s in ("val", "test") for k, v in classification_metrics(y, proba).items()}
    m.update({f"test_{k}": v for k, v in per_class_metrics(y, proba.argmax(1), ["a", "b", "c"]).items()})
    m.update({f"test_{k}": v for k, v in bootstrap_ci(y, proba, 50, 0).items()})
    text = write_report(m, ["a", "b", "c"], figures, tmp_path).read_text()
    assert "95% CI" in text
    assert "![roc](roc.png)" in text
    assert "| b |" in text


def test_image_keys_name_the_section_and_keep_to_mlflow_characters(tmp_path):
    from pipeline.evaluate import image_key

    assert image_key(tmp_path / "roc_pr.png", tmp_path) == "figures/roc_pr"
    overlay = tmp_path / "gradcam" / "nodule-wrong-1 (scan #3, ü).png"
    assert image_key(overlay, tmp_path) == "gradcam/nodule-wrong-1__scan__3____"
