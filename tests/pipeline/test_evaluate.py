import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.metrics import classification_metrics, expected_calibration_error, per_class_metrics
from pipeline.plots import plot_confusion


@pytest.fixture
def multiclass():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + 2.0 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def test_metrics_agree_with_scikit_learn(multiclass):
    y, proba = multiclass
    m = classification_metrics(y, proba)
    pred = proba.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(np.eye(3)[y], proba, average="macro"))


def test_binary_metrics_use_the_positive_class():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.4, 0.6, 0.7, 0.8, 0.3, 0.9, 0.2])
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(2 * skm.brier_score_loss(y, p1))


def test_ece_is_zero_when_confidence_matches_accuracy():
    y = np.array([0] * 8 + [1] * 2)
    proba = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(y, proba, 10) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(10, int), proba, 10) == pytest.approx(0.8)


def test_per_class_and_confusion_plot(tmp_path, multiclass):
    y, proba = multiclass
    pred = proba.argmax(axis=1)
    per = per_class_metrics(y, pred, ["a", "b", "c"])
    assert per["recall_b"] == pytest.approx(skm.recall_score(y, pred, average=None)[1])
    assert per["support_c"] == (y == 2).sum()
    png = plot_confusion(y, pred, ["a", "b", "c"], tmp_path / "cm.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded(multiclass):
    from pipeline.metrics import bootstrap_ci

    y, proba = multiclass
    ci = bootstrap_ci(y, proba, 200, seed=1)
    point = classification_metrics(y, proba)
    assert ci["roc_auc_ci_low"] < point["roc_auc"] < ci["roc_auc_ci_high"]
    assert ci["balanced_accuracy_ci_low"] < point["balanced_accuracy"] < ci["balanced_accuracy_ci_high"]
    assert ci == bootstrap_ci(y, proba, 200, seed=1) and ci != bootstrap_ci(y, proba, 200, seed=2)


def test_operating_threshold_youden_and_target_sensitivity():
    from pipeline.metrics import operating_threshold, threshold_metrics

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.65, 0.6, 0.7, 0.8, 0.9])
    assert operating_threshold(y, p1, None) == pytest.approx(0.7)  # J = 0.75 - 0 at 0.7
    assert operating_threshold(y, p1, 1.0) == pytest.approx(0.6)  # highest threshold with all positives found
    m = threshold_metrics(y, np.stack([1 - p1, p1], 1), y, np.stack([1 - p1, p1], 1), 1.0)
    assert m["sensitivity_at_threshold"] == 1.0 and m["specificity_at_threshold"] == 0.75


def test_figures_and_report(tmp_path, multiclass):
    from pipeline import plots
    from pipeline.evaluate import write_report
    from pipeline.metrics import bootstrap_ci, per_class_metrics

    y, proba = multiclass
    figures = [plots.roc_pr_curves(y, proba, ["a", "b", "c"], tmp_path / "roc.png"),
               plots.reliability(y, proba, 10, tmp_path / "rel.png"),
               plots.training_curves({"loss": [1, 0.5], "val_loss": [1.1, 0.7], "val_roc_auc": [0.6, 0.8]},
                                     tmp_path / "curves.png")]
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in figures)
    m = {f"{s}_{k}": v for s in ("val", "test") for k, v in classification_metrics(y, proba).items()}
    m.update({f"test_{k}": v for k, v in per_class_metrics(y, proba.argmax(1), ["a", "b", "c"]).items()})
    m.update({f"test_{k}": v for k, v in bootstrap_ci(y, proba, 50, 0).items()})
    text = write_report(m, ["a", "b", "c"], figures, tmp_path).read_text()
    assert "95% CI" in text and "![roc](roc.png)" in text and "| b |" in text
