"""pipeline.metrics: the headline metrics against scikit-learn, calibration, intervals and thresholds."""

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.metrics import classification_metrics, expected_calibration_error


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
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(2 * skm.brier_score_loss(y, p1))


def test_ece_is_zero_when_confidence_matches_accuracy():
    y = np.array([0] * 8 + [1] * 2)
    proba = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(y, proba, 10) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(10, int), proba, 10) == pytest.approx(0.8)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded(multiclass):
    from pipeline.metrics import bootstrap_ci

    y, proba = multiclass
    ci = bootstrap_ci(y, proba, 200, seed=1)
    point = classification_metrics(y, proba)
    assert ci["roc_auc_ci_low"] < point["roc_auc"] < ci["roc_auc_ci_high"]
    assert ci["balanced_accuracy_ci_low"] < point["balanced_accuracy"] < ci["balanced_accuracy_ci_high"]
    assert ci == bootstrap_ci(y, proba, 200, seed=1)
    assert ci != bootstrap_ci(y, proba, 200, seed=2)


def test_operating_threshold_youden_and_target_sensitivity():
    from pipeline.metrics import operating_threshold, threshold_metrics

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.65, 0.6, 0.7, 0.8, 0.9])
    assert operating_threshold(y, p1, None) == pytest.approx(0.7)  # J = 0.75 - 0 at 0.7
    assert operating_threshold(y, p1, 1.0) == pytest.approx(0.6)  # highest threshold with all positives found
    m = threshold_metrics(y, np.stack([1 - p1, p1], 1), y, np.stack([1 - p1, p1], 1), 1.0)
    assert m["sensitivity_at_threshold"] == 1.0
    assert m["specificity_at_threshold"] == 0.75


def test_subgroup_metrics_score_each_group_alone():
    from pipeline.metrics import subgroup_metrics

    y = np.array([0, 1, 0, 1, 0, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.4, 0.6]])
    rows = subgroup_metrics(y, proba, {"sex": np.array(["F", "F", "F", "F", "M", "M"])})
    by_group = {r["group"]: r for r in rows}
    assert [r["n"] for r in rows] == [4, 2]
    assert by_group["F"]["accuracy"] == pytest.approx(0.75)
    assert by_group["F"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[:4], proba[:4, 1]))
    assert np.isnan(by_group["M"]["roc_auc"])  # one class only: no ROC-AUC, and no warning either
    assert by_group["M"]["specificity"] == pytest.approx(0.5)
