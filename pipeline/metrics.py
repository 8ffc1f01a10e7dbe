"""Classification metrics shared by training (validation ROC-AUC), evaluation and the promotion gate."""

from typing import NamedTuple

import numpy as np


def macro_roc_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over the classes present with both outcomes (binary: class 1).

    Args:
        y: Integer labels.
        proba: (N, classes) probabilities.

    Returns:
        The macro ROC-AUC; NaN when no class has both outcomes.
    """
    from sklearn.metrics import roc_auc_score

    classes = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    aucs = [roc_auc_score(y == c, proba[:, c]) for c in classes if 0 < (y == c).sum() < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _one_vs_rest(y: np.ndarray, pred: np.ndarray, n: int) -> tuple[float, float]:
    """Sensitivity and specificity: of class 1 when binary, else macro over classes."""
    classes = [1] if n == 2 else range(n)
    sens = [np.mean(pred[y == c] == c) for c in classes if (y == c).any()]
    spec = [np.mean(pred[y != c] != c) for c in classes if (y != c).any()]
    return float(np.mean(sens)), float(np.mean(spec))


class ConfidenceBins(NamedTuple):
    """Per image: the top-class confidence, whether that class was right, and its confidence bin."""

    confidence: np.ndarray
    correct: np.ndarray
    bin_index: np.ndarray


def confidence_bins(y: np.ndarray, proba: np.ndarray, bins: int) -> ConfidenceBins:
    """Top-class confidence, whether it was right, and its equal-width bin index (0 .. bins-1).

    Args:
        y: Integer labels.
        proba: (N, classes) probabilities.
        bins: Number of equal-width bins on [0, 1].

    Returns:
        Per image: confidence, correct (bool) and bin index.
    """
    conf, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    return ConfidenceBins(conf, correct, np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1))


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int) -> float:
    """ECE of the top-class confidence over equal-width bins.

    Args:
        y: Integer labels.
        proba: (N, classes) probabilities.
        bins: Number of equal-width bins.

    Returns:
        The expected calibration error.
    """
    conf, correct, idx = confidence_bins(y, proba, bins)
    return float(
        sum(
            abs(correct[idx == b].mean() - conf[idx == b].mean()) * (idx == b).mean()
            for b in range(bins)
            if (idx == b).any()
        )
    )


def classification_metrics(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> dict[str, float]:
    """The headline metrics of DESIGN.md for integer labels and class probabilities.

    Args:
        y: Integer labels.
        proba: (N, classes) probabilities.
        bins: ECE bins.

    Returns:
        accuracy, balanced_accuracy, roc_auc, pr_auc, sensitivity, specificity, log_loss, brier and ece.
    """
    from sklearn.metrics import accuracy_score, average_precision_score, balanced_accuracy_score, log_loss

    n, pred = proba.shape[1], proba.argmax(axis=1)
    onehot = np.eye(n)[y]
    classes = [1] if n == 2 else range(n)
    pr = [average_precision_score(onehot[:, c], proba[:, c]) for c in classes if onehot[:, c].any()]
    sens, spec = _one_vs_rest(y, pred, n)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "roc_auc": macro_roc_auc(y, proba),
        "pr_auc": float(np.mean(pr)),
        "sensitivity": sens,
        "specificity": spec,
        "log_loss": float(log_loss(y, proba, labels=list(range(n)))),
        "brier": float(np.mean(np.sum((proba - onehot) ** 2, axis=1))),
        "ece": expected_calibration_error(y, proba, bins),
    }


def per_class_metrics(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Precision, recall, F1 and support of each class, keyed `<metric>_<class>`.

    Args:
        y: Integer labels.
        pred: Predicted integer labels.
        classes: Class names in label order.

    Returns:
        `precision_<c>`, `recall_<c>`, `f1_<c>` and `support_<c>` per class.
    """
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(len(classes))), zero_division=0)
    return {
        f"{name}_{c}": float(v[i])
        for name, v in (("precision", p), ("recall", r), ("f1", f), ("support", s))
        for i, c in enumerate(classes)
    }


def subgroup_metrics(y: np.ndarray, proba: np.ndarray, groups: dict[str, np.ndarray]) -> list[dict]:
    """Test metrics of each subgroup (e.g. each value of a manifest's `sex` column).

    Args:
        y: Integer labels.
        proba: (N, classes) probabilities.
        groups: Column name → the group of each image (N strings).

    Returns:
        One row per column and group: column, group, n, accuracy, balanced_accuracy, roc_auc (NaN with one
        class present), sensitivity and specificity.
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    rows = []
    for column, values in groups.items():
        for group in sorted(set(values.tolist())):
            i = values == group
            pred = proba[i].argmax(axis=1)
            with warnings.catch_warnings():  # a group may lack a class: NaN where a metric needs it
                warnings.simplefilter("ignore", UserWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                sens, spec = _one_vs_rest(y[i], pred, proba.shape[1])
                balanced = float(balanced_accuracy_score(y[i], pred))
            rows.append(
                {
                    "column": column,
                    "group": group,
                    "n": int(i.sum()),
                    "accuracy": float(np.mean(pred == y[i])),
                    "balanced_accuracy": balanced,
                    "roc_auc": macro_roc_auc(y[i], proba[i]),
                    "sensitivity": sens,
                    "specificity": spec,
                }
            )
    return rows


def bootstrap_ci(y: np.ndarray, proba: np.ndarray, n: int, seed: int) -> dict[str, float]:
    """95% percentile bootstrap intervals of ROC-AUC and balanced accuracy (resampling images, seeded).

    Args:
        y: Integer labels.
        proba: (N, classes) probabilities.
        n: Number of resamples.
        seed: Seed of the resampling.

    Returns:
        `roc_auc_ci_low/high` and `balanced_accuracy_ci_low/high`.
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(seed)
    stats = []
    with warnings.catch_warnings():  # a resample may miss a small class; the interval accounts for that
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(n):
            i = rng.integers(0, len(y), len(y))
            stats.append((macro_roc_auc(y[i], proba[i]), balanced_accuracy_score(y[i], proba[i].argmax(axis=1))))
    low, high = np.nanpercentile(np.array(stats), [2.5, 97.5], axis=0)
    return {
        "roc_auc_ci_low": low[0],
        "roc_auc_ci_high": high[0],
        "balanced_accuracy_ci_low": low[1],
        "balanced_accuracy_ci_high": high[1],
    }


def operating_threshold(y: np.ndarray, p1: np.ndarray, target_sensitivity: float | None) -> float:
    """Binary decision threshold on P(class 1): Youden's J, or the highest reaching a target sensitivity.

    Args:
        y: Binary labels.
        p1: Probabilities of class 1.
        target_sensitivity: The sensitivity to reach; None: maximise Youden's J.

    Returns:
        The threshold, at most 1.0.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y, p1)
    if target_sensitivity is None:
        return float(min(thresholds[np.argmax(tpr - fpr)], 1.0))
    return float(min(thresholds[np.argmax(tpr >= target_sensitivity)], 1.0))


def threshold_metrics(
    y_val: np.ndarray, p_val: np.ndarray, y: np.ndarray, p: np.ndarray, target: float | None
) -> dict[str, float]:
    """Choose the threshold on validation, report test sensitivity and specificity at it.

    Args:
        y_val: Validation labels (binary).
        p_val: Validation probabilities (N, 2).
        y: Test labels (binary).
        p: Test probabilities (N, 2).
        target: The target sensitivity; None: Youden's J.

    Returns:
        `threshold`, `sensitivity_at_threshold` and `specificity_at_threshold`.
    """
    t = operating_threshold(y_val, p_val[:, 1], target)
    pred = (p[:, 1] >= t).astype(int)
    return {
        "threshold": t,
        "sensitivity_at_threshold": float(np.mean(pred[y == 1] == 1)),
        "specificity_at_threshold": float(np.mean(pred[y == 0] == 0)),
    }
