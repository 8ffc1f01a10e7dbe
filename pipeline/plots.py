"""Evaluation figures as PNGs (matplotlib, Agg): ROC and PR curves, reliability, training curves."""

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    _pyplot().close(fig)
    return path


def roc_pr_curves(y: np.ndarray, proba: np.ndarray, classes: list[str], path: Path) -> Path:
    """One-vs-rest ROC and precision-recall curves per class (the positive class when binary).

    Args:
        y: Integer labels.
        proba: (N, classes) probabilities.
        classes: Class names.
        path: The PNG to write.

    Returns:
        The path.
    """
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    plt = _pyplot()
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    for c in [1] if len(classes) == 2 else range(len(classes)):
        if 0 < (y == c).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == c, proba[:, c])
            prec, rec, _ = precision_recall_curve(y == c, proba[:, c])
            roc_ax.plot(fpr, tpr, label=f"{classes[c]} (AUC {auc(fpr, tpr):.3f})")
            pr_ax.plot(rec, prec, label=classes[c])
    roc_ax.plot([0, 1], [0, 1], "k:", lw=1)
    roc_ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="Test ROC (one vs rest)")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Test precision-recall", ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
    return _save(fig, path)


def reliability(y: np.ndarray, proba: np.ndarray, bins: int, path: Path) -> Path:
    """Reliability diagram of the top-class confidence: accuracy per confidence bin vs the diagonal.

    Args:
        y: Integer labels.
        proba: (N, classes) probabilities.
        bins: Number of equal-width confidence bins.
        path: The PNG to write.

    Returns:
        The path.
    """
    from pipeline.metrics import confidence_bins

    plt = _pyplot()
    _, correct, idx = confidence_bins(y, proba, bins)
    centres = [(b + 0.5) / bins for b in range(bins) if (idx == b).any()]
    accuracy = [correct[idx == b].mean() for b in range(bins) if (idx == b).any()]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.bar(centres, accuracy, width=1 / bins, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", title="Test reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def training_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and validation ROC-AUC per epoch.

    Args:
        history: Per-epoch `loss`, `val_loss` and `val_roc_auc`.
        path: The PNG to write.

    Returns:
        The path.
    """
    plt = _pyplot()
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history["loss"]) + 1)
    loss_ax.plot(epochs, history["loss"], label="train")
    loss_ax.plot(epochs, history["val_loss"], label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    loss_ax.legend()
    auc_ax.plot(epochs, history["val_roc_auc"], color="C2")
    auc_ax.set(xlabel="epoch", ylabel="ROC-AUC", title="Validation ROC-AUC")
    return _save(fig, path)


def plot_confusion(y: np.ndarray, pred: np.ndarray, classes: list[str], path: Path) -> Path:
    """Confusion matrix as counts and row-normalised rates, side by side, saved as PNG.

    Args:
        y: Integer labels.
        pred: Predicted integer labels.
        classes: Class names.
        path: The PNG to write.

    Returns:
        The path.
    """
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, matrix, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], rates, "row-normalised", ".2f")):
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, format(v, fmt), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
        ax.set(
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            xticklabels=classes,
            yticklabels=classes,
            xlabel="predicted",
            ylabel="true",
            title=f"Test confusion matrix ({title})",
        )
    return _save(fig, path)
