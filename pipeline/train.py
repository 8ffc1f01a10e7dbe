"""Training: seeded, deterministic Keras fit over tf.data, per-epoch metrics to MLflow."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.balance import load_balance
from pipeline.config import Params, TrainParams, Workspace
from pipeline.lineage import lineage_tags, weights_sha256
from pipeline.preprocess import load_dataset
from pipeline.registry import setup_tracking


@dataclass(frozen=True)
class TrainResult:
    """The MLflow run, the saved model and how training went."""

    run_id: str
    model_path: str
    epochs_run: int
    best_epoch: int
    weights_sha256: str
    data_md5: str


def configure_determinism(seed: int, enabled: bool) -> None:
    """Seed Python, NumPy and TF; with `enabled`, make TF ops deterministic too."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if enabled:
        tf.config.experimental.enable_op_determinism()


def make_dataset(x: np.ndarray, y: np.ndarray, n_classes: int, batch: int, shuffle_seed: int | None):
    """tf.data pipeline of (image, one-hot) batches, shuffled with a seed when asked."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(n_classes, dtype=np.float32)[y]))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def macro_roc_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over the classes present with both outcomes (binary: class 1)."""
    from sklearn.metrics import roc_auc_score

    classes = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    aucs = [roc_auc_score(y == c, proba[:, c]) for c in classes if 0 < (y == c).sum() < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def epoch_callbacks(x_val: np.ndarray, y_val: np.ndarray, tp: TrainParams) -> list:
    """Validation ROC-AUC into the epoch logs, MLflow curves, early stopping on that AUC."""
    import keras
    import mlflow

    class ValRocAuc(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs if logs is not None else {}
            logs["val_roc_auc"] = macro_roc_auc(y_val, np.asarray(self.model(x_val, training=False)))
            mlflow.log_metrics({"train_loss": logs["loss"], "train_accuracy": logs["accuracy"],
                                "val_loss": logs["val_loss"], "val_accuracy": logs["val_accuracy"],
                                "val_roc_auc": logs["val_roc_auc"]}, step=epoch)

    stop = keras.callbacks.EarlyStopping(monitor="val_roc_auc", mode="max", patience=tp.patience,
                                         start_from_epoch=tp.min_epochs, restore_best_weights=True)
    return [ValRocAuc(), stop]


def fit(model, train_xy: tuple, val_xy: tuple, n_classes: int, tp: TrainParams,
        class_weight: dict[int, float] | None) -> dict[str, list[float]]:
    """Compile with Adam + categorical cross-entropy and fit; return the Keras history."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(tp.learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(make_dataset(*train_xy, n_classes, tp.batch_size, tp.seed),
                        validation_data=make_dataset(*val_xy, n_classes, tp.batch_size, None),
                        epochs=tp.epochs, class_weight=class_weight, verbose=2, shuffle=False,
                        callbacks=epoch_callbacks(*val_xy, tp))
    return history.history


def _flat(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(f"{prefix}.{key}", sub).items()}
    return {prefix: value}


def run_step(params: Params, ws: Workspace) -> TrainResult:
    """Train params.model on the balanced train split inside a new MLflow run."""
    import mlflow

    from pipeline.model import build_model

    data, balance = load_dataset(ws.out / "preprocess" / "dataset.npz"), load_balance(ws)
    train = load_dataset(balance.train)
    n_classes, tp = len(data["classes"]), params.train
    configure_determinism(tp.seed, tp.determinism)
    model = build_model(params.model.name, data["x_train"].shape[1:], n_classes)
    report = json.loads((ws.out / "validate" / "report.json").read_text())
    tags = {**lineage_tags(params, ws), "medpipe.validation": "passed" if report["success"] else "failed"}
    with mlflow.start_run(experiment_id=setup_tracking(params.register_, ws.base), tags=tags) as run:
        mlflow.log_params(_flat("params", params.model_dump(mode="json", by_alias=True)))
        mlflow.log_dict({"before": balance.counts_before, "after": balance.counts_after}, "balance/class_counts.json")
        mlflow.log_artifacts(str(ws.out / "validate"), "validation")  # reports + the exact split
        history = fit(model, (train["x"], train["y"]), (data["x_val"], data["y_val"]), n_classes, tp,
                      balance.class_weight)
        out = ws.step_dir("train")
        model.save(out / "model.keras")
        sha = weights_sha256(model.get_weights())
        mlflow.set_tag("medpipe.weights_sha256", sha)
    result = TrainResult(run.info.run_id, str((out / "model.keras").relative_to(ws.base)), len(history["loss"]),
                         int(np.argmax(history["val_roc_auc"])) + 1, sha, tags["medpipe.data_md5"])
    (out / "run.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    (out / "history.json").write_text(json.dumps({k: [float(v) for v in vs] for k, vs in history.items()}) + "\n")
    return result
