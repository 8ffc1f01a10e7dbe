"""Evaluation: headline and per-class metrics, a confusion-matrix plot, metrics.json for DVC."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Params, Workspace
from pipeline.preprocess import load_dataset
from pipeline.train import macro_roc_auc


@dataclass(frozen=True)
class EvaluateResult:
    """Final metrics (`val_*`, `test_*`) and the files written."""

    metrics: dict[str, float]
    metrics_file: Path
    plots: list[Path]


def _one_vs_rest(y: np.ndarray, pred: np.ndarray, n: int) -> tuple[float, float]:
    """Sensitivity and specificity: of class 1 when binary, else macro over classes."""
    classes = [1] if n == 2 else range(n)
    sens = [np.mean(pred[y == c] == c) for c in classes if (y == c).any()]
    spec = [np.mean(pred[y != c] != c) for c in classes if (y != c).any()]
    return float(np.mean(sens)), float(np.mean(spec))


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int) -> float:
    """ECE of the top-class confidence over equal-width bins."""
    conf, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    return float(sum(abs(correct[idx == b].mean() - conf[idx == b].mean()) * (idx == b).mean()
                     for b in range(bins) if (idx == b).any()))


def classification_metrics(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> dict[str, float]:
    """The headline metrics of DESIGN.md for integer labels and class probabilities."""
    from sklearn.metrics import accuracy_score, average_precision_score, balanced_accuracy_score, log_loss

    n, pred = proba.shape[1], proba.argmax(axis=1)
    onehot = np.eye(n)[y]
    classes = [1] if n == 2 else range(n)
    pr = [average_precision_score(onehot[:, c], proba[:, c]) for c in classes if onehot[:, c].any()]
    sens, spec = _one_vs_rest(y, pred, n)
    return {"accuracy": float(accuracy_score(y, pred)), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "roc_auc": macro_roc_auc(y, proba), "pr_auc": float(np.mean(pr)), "sensitivity": sens,
            "specificity": spec, "log_loss": float(log_loss(y, proba, labels=list(range(n)))),
            "brier": float(np.mean(np.sum((proba - onehot) ** 2, axis=1))),
            "ece": expected_calibration_error(y, proba, bins)}


def per_class_metrics(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Precision, recall, F1 and support of each class, keyed `<metric>_<class>`."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(len(classes))), zero_division=0)
    return {f"{name}_{c}": float(v[i]) for name, v in (("precision", p), ("recall", r), ("f1", f), ("support", s))
            for i, c in enumerate(classes)}


def plot_confusion(y: np.ndarray, pred: np.ndarray, classes: list[str], path: Path) -> Path:
    """Confusion matrix as counts and row-normalised rates, side by side, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, matrix, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], rates, "row-normalised", ".2f")):
        ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, format(v, fmt), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
               xlabel="predicted", ylabel="true", title=f"Test confusion matrix ({title})")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def run_step(params: Params, ws: Workspace) -> EvaluateResult:
    """Evaluate the trained model on val and test; write metrics.json and plots; log to MLflow."""
    import keras
    import mlflow

    from pipeline.registry import setup_tracking

    data = load_dataset(ws.out / "preprocess" / "dataset.npz")
    classes = [str(c) for c in data["classes"]]
    model = keras.models.load_model(ws.out / "train" / "model.keras", compile=False)
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        proba = model.predict(data[f"x_{split}"], verbose=0).astype(np.float64)
        proba /= proba.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 only within ~1e-7
        metrics.update({f"{split}_{k}": v for k, v in classification_metrics(data[f"y_{split}"], proba,
                                                                             params.evaluate.ece_bins).items()})
    pred = proba.argmax(axis=1)
    metrics.update({f"test_{k}": v for k, v in per_class_metrics(data["y_test"], pred, classes).items()})
    out = ws.step_dir("evaluate")
    plots = [plot_confusion(data["y_test"], pred, classes, out / "confusion_matrix.png")]
    (ws.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    trained = json.loads((ws.out / "train" / "run.json").read_text())
    setup_tracking(params.register_, ws.base)
    with mlflow.start_run(run_id=trained["run_id"]):
        # after the per-epoch curves (val_roc_auc shares its name), so the final value is the latest
        mlflow.log_metrics(metrics, step=trained["epochs_run"])
        for plot in plots:
            mlflow.log_artifact(str(plot), "evaluation")
    return EvaluateResult(metrics, ws.out / "metrics.json", plots)
