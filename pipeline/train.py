"""Training: a seeded tf.data input pipeline, Adam with a schedule, early stopping on validation ROC-AUC,
a checkpoint each epoch (`resume` continues to the very same result), GPUs when present.

Each epoch's order and augmentations are functions of (seed, epoch) only, so a run resumed at epoch k
sees exactly the batches the uninterrupted run saw.
"""

import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from pipeline import faults
from pipeline.augment import augment_batch, augments
from pipeline.backend import active, gpus, resolve, seed_everything, select
from pipeline.balance import BalanceResult, load_plan
from pipeline.config import AugmentParams, Params, TrainParams, Workspace
from pipeline.feed import epoch_order, train_feed
from pipeline.lineage import lineage_tags, weights_sha256
from pipeline.metrics import macro_roc_auc
from pipeline.outputs import read_result, replace_dir, swap_in
from pipeline.preprocess import PreprocessResult
from pipeline.registry import lost_insert_race, owner_tags, setup_tracking
from pipeline.semi import POOL, pick, picked_by, predict_pool, round_summary, share_note, student_plan
from pipeline.shards import JoinedShards, Shards, Split, read_meta
from pipeline.validate import ValidationReport

log = logging.getLogger(__name__)

DETERMINISTIC_XLA = "--xla_gpu_deterministic_ops=true"
CURVES = ("loss", "accuracy", "val_loss", "val_accuracy", "val_roc_auc", "lr")
# MLflow's run page shows metrics named `<section>/<name>` in their own chart sections, before the unprefixed
# ones; the learning curves are logged there too, so they come first, while their names of record
# (`train_loss`, `val_loss`, `val_roc_auc`, ...) stay as DESIGN.md fixes them.
CURVE_SECTION = "curves"


def curve_metrics(logs: dict, phase: str = "") -> dict[str, float]:
    """One epoch's figures as MLflow metrics: under their names of record and again in the curves section;
    an earlier phase's (a pseudo-labelling teacher's) only in its own section.

    Args:
        logs: The epoch's figures (every key of CURVES).
        phase: "" for the model the run delivers, else the phase's section (e.g. `round0`).

    Returns:
        Metric name to value.
    """
    named = {f"train_{k}" if k in ("loss", "accuracy") else k: float(logs[k]) for k in CURVES}
    if phase:
        return {f"{phase}/{k}": v for k, v in named.items()}
    return {**named, **{f"{CURVE_SECTION}/{k}": v for k, v in named.items()}}


@dataclass(frozen=True)
class TrainResult:
    """The MLflow run, the saved model and how training went."""

    run_id: str
    model_path: str
    epochs_run: int
    best_epoch: int
    weights_sha256: str
    data_md5: str
    resumed_from: int = 0

    def folder(self, base: Path) -> Path:
        """The train step's output folder: model.keras, run.json and history.json.

        Args:
            base: The project folder (model_path is relative to it).

        Returns:
            The folder.
        """
        return (base / self.model_path).parent


def configure_determinism(seed: int, enabled: bool) -> None:
    """Seed Python, NumPy, Keras and the backend; with `enabled` on TensorFlow, make its ops deterministic too
    (JAX on CPU is; on GPUs configure_devices asks XLA for deterministic ops).

    Args:
        seed: The seed.
        enabled: Whether to turn on TF op determinism.
    """
    import keras

    seed_everything(seed)
    if enabled and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


@contextmanager
def own_default_seeds(seed: int):
    """Keras seeds every unseeded initializer and SeedGenerator from Python's process-wide `random`
    (keras.src.random.seed_generator.make_default_seed), which other threads draw from too: the
    websockets keepalive ping of Prefect's events client calls random.getrandbits(32) every 20 s in its
    event-loop thread. A ping between keras.utils.set_random_seed and the model build (likelier on a
    busy machine) changed the initial weights. Inside this block Keras draws from a private generator
    in the very state random.seed(seed) gives, so an undisturbed build gets the same weights as before.

    Args:
        seed: The private generator's seed.

    Returns:
        A context manager; Keras's shared generator is put back on exit.
    """
    from keras.src.random import seed_generator

    shared = seed_generator.python_random  # AttributeError if Keras moves it: fail loudly, never silently
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared


def configure_devices(training: TrainParams):
    """GPU memory growth (before any GPU is touched), the precision policy, and the distribution: on
    TensorFlow a MirroredStrategy over every visible GPU when there are several, on JAX Keras's
    DataParallel. Returns (a context to build the model in, mixed).

    Mixed precision (`auto`: on GPUs that have fast half precision): bfloat16 on JAX (no loss scaling
    needed), float16 with Keras's loss scaling on TensorFlow.

    Args:
        training: The train params (memory_growth, mixed_precision, determinism).

    Returns:
        (a context manager to build the model in, whether mixed precision is on).
    """
    import keras

    name = keras.backend.backend()
    if name == "jax":  # read when JAX first starts a device backend
        flags = os.environ.get("XLA_FLAGS", "")
        if training.determinism and DETERMINISTIC_XLA not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_XLA}".strip()
        if training.memory_growth:  # JAX takes 75 % of a GPU's memory up front otherwise
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    found = gpus(name)
    if name == "jax":
        policy = "float32"
        if training.mixed_precision == "on" or (training.mixed_precision == "auto" and bool(found)):
            # bfloat16 where the card computes it fast (compute capability 8.0 on), else float16, which
            # Keras trains with loss scaling (compile wraps the optimizer); `on` without a GPU: bfloat16
            capability = min((float(getattr(g, "compute_capability", 8.0)) for g in found), default=8.0)
            policy = "mixed_bfloat16" if capability >= 8.0 else "mixed_float16"
            if training.mixed_precision == "auto" and capability < 7.0:
                policy = "float32"
        mixed = policy != "float32"
        keras.mixed_precision.set_global_policy(policy)
        if len(found) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=found))
        return nullcontext(), mixed
    import tensorflow as tf

    for gpu in found if training.memory_growth else []:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: the setting stays as it was
            pass
    capable = bool(found) and all(
        tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) >= (7, 0) for g in found
    )
    mixed = training.mixed_precision == "on" or (training.mixed_precision == "auto" and capable)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    strategy = tf.distribute.MirroredStrategy() if len(found) > 1 else tf.distribute.get_strategy()
    return strategy.scope(), mixed


def learning_rate(training: TrainParams, steps_per_epoch: int):
    """A constant rate, cosine decay over the whole run, or a step decay every `step_epochs` epochs.

    Args:
        training: The train params (schedule, learning_rate, epochs, step_epochs, step_gamma).
        steps_per_epoch: Batches per epoch.

    Returns:
        The float rate or a Keras learning-rate schedule.
    """
    import keras

    if training.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            training.learning_rate, decay_steps=training.epochs * steps_per_epoch
        )
    if training.schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            training.learning_rate, training.step_epochs * steps_per_epoch, training.step_gamma, staircase=True
        )
    return training.learning_rate


def _pixels(shards: Split, in_memory: bool):
    """A function from a batch of split positions to uint8 images: a gather from one in-memory tensor,
    or memory-mapped shard reads for splits too big to hold."""
    import tensorflow as tf

    if in_memory:
        table = tf.constant(shards.read())
        return lambda idx: tf.gather(table, idx)

    def read(idx):
        images = tf.numpy_function(shards.take, [idx], tf.uint8, stateful=False)
        return tf.ensure_shape(images, [None, *shards.shape])

    return read


def train_dataset(
    shards: Split,
    plan: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    training: TrainParams,
    augmentation: AugmentParams,
    start_epoch: int = 0,
):
    """Batches of (image in [0, 1], one-hot label) for epochs start_epoch..training.epochs-1, as one dataset.

    Per epoch: a permutation of the plan drawn from (seed, epoch); images gathered, scaled, and the
    plan's flagged ones augmented with a seed drawn from (seed, epoch, batch). Returns (dataset, steps).

    Args:
        shards: The train split's shards.
        plan: (index into the split, augment flags) from the balance step.
        n_classes: How many classes (the one-hot width).
        training: The train params (batch_size, epochs, seed, in_memory_mb).
        augmentation: The augment params.
        start_epoch: The first epoch (a resumed run's).

    Returns:
        (the tf.data dataset, steps per epoch).
    """
    import tensorflow as tf

    index, flags = (tf.constant(a) for a in plan)
    labels, n, steps = tf.constant(shards.labels), len(plan[0]), math.ceil(len(plan[0]) / training.batch_size)
    pixels = _pixels(shards, shards.nbytes <= training.in_memory_mb * 2**20)
    augment = augments(augmentation) and bool(plan[1].any())

    def load(epoch, batch, positions):
        idx = tf.gather(index, positions)
        x = tf.cast(pixels(idx), tf.float32) / 255.0
        if augment:
            x = augment_batch(x, tf.gather(flags, positions), epoch, batch, training.seed, augmentation)
        return x, tf.one_hot(tf.gather(labels, idx), n_classes)

    def epoch_batches(epoch):
        # the JAX feed's order (NumPy, from (seed, epoch)): both backends train on the same batches
        drawn = tf.numpy_function(lambda e: epoch_order(training.seed, int(e), n), [epoch], tf.int64, stateful=False)
        order = tf.ensure_shape(drawn, [n])
        batches = tf.data.Dataset.from_tensor_slices(order).batch(training.batch_size).enumerate()
        return batches.map(lambda b, pos: load(epoch, b, pos), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return tf.data.Dataset.range(start_epoch, training.epochs).flat_map(epoch_batches).prefetch(tf.data.AUTOTUNE), steps


def validation_logs(model, x_val: np.ndarray, y_val: np.ndarray) -> dict[str, float]:
    """Validation loss, accuracy and macro ROC-AUC in one pass over the split.

    Args:
        model: The Keras model.
        x_val: The val images, uint8.
        y_val: Their class indices.

    Returns:
        val_loss, val_accuracy and val_roc_auc.
    """
    from pipeline.model import predict_uint8

    proba = predict_uint8(model, x_val)
    picked = np.clip(proba[np.arange(len(y_val)), y_val], 1e-7, 1.0)
    return {
        "val_loss": float(-np.log(picked).mean()),
        "val_accuracy": float((proba.argmax(1) == y_val).mean()),
        "val_roc_auc": macro_roc_auc(y_val, proba),
    }


@dataclass
class Progress:
    """Where a run stands after its last finished epoch: what a checkpoint records besides the weights."""

    key: str
    run_id: str = ""
    epoch: int = 0  # epochs finished
    best: float = float("nan")  # best monitored validation ROC-AUC, at best_epoch (-1: none yet)
    best_epoch: int = -1
    wait: int = 0
    stopped: bool = False
    history: dict[str, list[float]] | None = None
    rng: list[list[int]] | None = None  # dropout & co. random states: Keras does not save them with the model

    def record(self, epoch: int, logs: dict[str, float], training: TrainParams) -> bool:
        """Add one epoch's curves and apply early stopping; True when this epoch is the new best.

        Args:
            epoch: The epoch just finished (0-based).
            logs: Its figures (every key of CURVES).
            training: The train params (min_epochs, patience).

        Returns:
            True when this epoch is the new best.
        """
        self.history = self.history or {k: [] for k in CURVES}
        for k in CURVES:
            self.history[k].append(float(logs[k]))
        self.epoch, auc = epoch + 1, logs["val_roc_auc"]
        if epoch < training.min_epochs:
            return False
        improved = self.best_epoch < 0 or auc > self.best or (math.isnan(self.best) and not math.isnan(auc))
        self.best, self.best_epoch, self.wait = (
            (auc, epoch, 0) if improved else (self.best, self.best_epoch, self.wait + 1)
        )
        self.stopped = self.wait >= training.patience
        return improved


def _seed_states(model) -> list:
    return [v for v in model.variables if "seed_generator_state" in v.path]


def save_checkpoint(model, progress: Progress, folder: Path, improved: bool) -> None:
    """Model with optimizer state, best weights, random states and progress, into `folder` (swapped in whole).

    Args:
        model: The Keras model.
        progress: Where the run stands (its rng is filled here).
        folder: The checkpoint folder.
        improved: Whether this epoch is the new best (its weights become best.weights.h5).
    """
    progress.rng = [np.asarray(v).tolist() for v in _seed_states(model)]
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / "model.keras")
    if improved:
        model.save_weights(tmp / "best.weights.h5")
    elif (folder / "best.weights.h5").is_file():
        shutil.copy2(folder / "best.weights.h5", tmp / "best.weights.h5")
    (tmp / "progress.json").write_text(json.dumps(asdict(progress)) + "\n")
    swap_in(tmp, folder)


def read_progress(folder: Path, key: str) -> Progress | None:
    """The progress a checkpoint recorded, if it was made for the same inputs (`key`).

    Args:
        folder: The checkpoint folder.
        key: What the checkpoint must have been made for (checkpoint_key).

    Returns:
        The progress, or None when there is no readable one for `key`.
    """
    try:
        progress = Progress(**json.loads((folder / "progress.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return progress if progress.key == key else None


def load_checkpoint(folder: Path, key: str):
    """(model, progress) from a checkpoint made for the same inputs (`key`), else None.

    Args:
        folder: The checkpoint folder.
        key: What the checkpoint must have been made for (checkpoint_key).

    Returns:
        (model, progress), or None when there is no readable checkpoint for `key`.
    """
    import keras

    progress = read_progress(folder, key)
    if progress is None:
        return None
    import pipeline.model  # noqa: F401  (registers Standardize with Keras: a fresh process has not imported it)
    from pipeline import consistency, pretrain

    consistency.registered()  # a consistency student's loss and metric
    pretrain.registered()  # pre-training's loss
    model = keras.models.load_model(folder / "model.keras")
    for variable, value in zip(_seed_states(model), progress.rng or []):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return model, progress


def epoch_line(epoch: int, epochs: int, logs: dict[str, float], improved: bool) -> str:
    """One plain line per epoch (no bar, no escape codes): what logs off a terminal show.

    Args:
        epoch: The epoch just finished (0-based).
        epochs: The planned number of epochs.
        logs: Its training and validation figures (see CURVES).
        improved: Whether it is the new best epoch.

    Returns:
        E.g. `epoch 3/20: loss 0.412 accuracy 0.833 val_loss 0.398 val_accuracy 0.850 val_roc_auc 0.912 lr 0.001 *best`.
    """
    figures = " ".join(f"{k} {logs[k]:.4g}" if k == "lr" else f"{k} {logs[k]:.3f}" for k in CURVES)
    return f"epoch {epoch + 1}/{epochs}: {figures}" + (" *best" if improved else "")


def epoch_monitor(
    val: tuple[np.ndarray, np.ndarray], training: TrainParams, progress: Progress, folder: Path, phase: str = ""
):
    """Keras callback: validation metrics, early stopping, a checkpoint, MLflow curves, after each epoch;
    the best epoch's weights restored at the end.

    Args:
        val: (val images, val labels).
        training: The train params.
        progress: Where the run stands (updated each epoch).
        folder: The checkpoint folder.
        phase: "" for the model the run delivers, else an earlier phase's name (its curves' section).

    Returns:
        The Keras callback.
    """
    import keras
    import mlflow

    class EpochMonitor(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs if logs is not None else {}
            logs.update(validation_logs(self.model, *val))
            logs["lr"] = float(np.asarray(self.model.optimizer.learning_rate))
            improved = progress.record(epoch, logs, training)
            self.model.stop_training = progress.stopped
            save_checkpoint(self.model, progress, folder, improved)
            faults.point("train.epoch")
            mlflow.log_metrics(curve_metrics(logs, phase), step=epoch)
            log.info(
                (f"{phase} " if phase else "") + epoch_line(epoch, training.epochs, logs, improved)
            )  # DVC stages and the Prefect task log

        def on_train_end(self, logs: dict | None = None) -> None:
            if progress.best_epoch >= 0:
                self.model.load_weights(folder / "best.weights.h5")

    return EpochMonitor()


def fit(
    model,
    shards: Split,
    plan: tuple,
    val: tuple,
    params: Params,
    progress: Progress,
    folder: Path,
    class_weight: dict[int, float] | None,
    callbacks: tuple = (),
    phase: str = "",
    batches=None,
) -> Progress:
    """Train from progress.epoch to the end (or early stop), checkpointing each epoch.

    Args:
        model: The compiled Keras model.
        shards: The train split's shards.
        plan: (index, augment flags) from the balance step.
        val: (val images, val labels).
        params: The run's params.
        progress: Where the run stands.
        folder: The checkpoint folder.
        class_weight: Weight by class index, or None.
        callbacks: More Keras callbacks.
        phase: "" for the model the run delivers, else an earlier phase's name (see epoch_monitor).
        batches: Makes the batches from the first epoch: (data, steps); default: the supervised batches of
            `shards` and `plan` (train_dataset on TensorFlow, else train_feed).

    Returns:
        `progress`, updated; the model holds the best epoch's weights.
    """
    training, n_classes = params.train, int(model.output_shape[-1])
    if progress.epoch < training.epochs and not progress.stopped:
        if batches is None:
            feed = train_dataset if active() == "tensorflow" else train_feed
            batches = lambda start: feed(shards, plan, n_classes, training, params.balance.augment, start)  # noqa: E731
        data, steps = batches(progress.epoch)
        model.fit(
            data,
            epochs=training.epochs,
            initial_epoch=progress.epoch,
            steps_per_epoch=steps,
            class_weight=class_weight,
            verbose=1 if sys.stdout.isatty() else 0,
            shuffle=False,
            callbacks=[epoch_monitor(val, training, progress, folder, phase), *callbacks],
        )
    elif progress.best_epoch >= 0:
        model.load_weights(folder / "best.weights.h5")
    return progress


def _flat(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(f"{prefix}.{key}", sub).items()}
    return {prefix: value}


def new_model(params: Params, meta: dict, base: Path, steps_per_epoch: int):
    """Build and compile params.model with its normalisation (train mean/std from the preprocess meta).

    Args:
        params: The run's params.
        meta: The preprocess meta (size, channels, classes, mean, std).
        base: The project root (for local pretrained weights).
        steps_per_epoch: Batches per epoch (for the learning-rate schedule).

    Returns:
        The compiled Keras model.
    """
    import keras

    from pipeline.model import build_model

    training = params.train
    shape = (meta["size"], meta["size"], meta["channels"])
    with own_default_seeds(training.seed):  # initial weights from training.seed alone, whatever other threads draw
        model = build_model(
            params.model, shape, len(meta["classes"]), (params.preprocess.normalize, meta["mean"], meta["std"]), base
        )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(training, steps_per_epoch)),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=training.xla,
    )
    return model


def dropped_count(near_duplicates: dict) -> int:
    """How many val/test images validation dropped as copies of others (0 for older reports).

    Args:
        near_duplicates: What validation found (ValidationReport.near_duplicates, report.json's entry).

    Returns:
        The number dropped.
    """
    return int(near_duplicates.get("n_dropped", 0))


def start_run(
    params: Params, ws: Workspace, validated: ValidationReport, progress: Progress, tags: dict[str, str] | None = None
):
    """Open a new MLflow run with lineage tags and params, or reopen the resumed one (an ActiveRun).

    Args:
        params: The run's params.
        ws: The workspace.
        validated: The validate step's report (its outcome is tagged, its folder logged).
        progress: Where the run stands (a run_id: reopen that run).
        tags: More tags for a new run (e.g. `mlflow.parentRunId` of a tuning study's run).

    Returns:
        The mlflow ActiveRun.
    """
    import mlflow

    from pipeline.redact import redact_params

    experiment = setup_tracking(params.register_, ws.base)
    if progress.run_id:
        return mlflow.start_run(run_id=progress.run_id)
    tags = {
        **(tags or {}),
        **lineage_tags(params, ws),
        "medpipe.validation": "passed" if validated.success else "failed",
        "medpipe.near_duplicates_dropped": str(dropped_count(validated.near_duplicates)),
        "medpipe.backend": resolve(params.train.backend),  # what run_step selected
    }
    name = f"{params.model.name}-data-{tags['medpipe.data_md5'][:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = mlflow.start_run(experiment_id=experiment, tags=tags, run_name=name)  # not a random (seeded) name
    # no credentials of a tracking URI (a dict in, a dict out)
    logged = cast(dict[str, Any], redact_params(params.model_dump(mode="json", by_alias=True)))
    mlflow.log_params(_flat("params", logged))
    mlflow.log_dict(logged, "params.yaml")  # the exact params (reproduce sets its own tracking_uri)
    mlflow.log_artifacts(str(validated.folder), "validation")  # reports + the exact split
    log_data_input(validated, ws.data_root, tags["medpipe.data_md5"])
    return run


_LOG_INPUT_ATTEMPTS = 3  # a lost insert race (see lost_insert_race) is retried


def log_data_input(validated: ValidationReport, data_root: Path, data_md5: str) -> None:
    """The active run's dataset input: the data version, its labels and splits, and the images per split.

    Only the label and split columns go in (MLflow keeps their schema and row count, not the rows):
    file names can carry patient names.

    Args:
        validated: The validate step's report (its split table).
        data_root: The data set (its name and location are the dataset's name and source).
        data_md5: The data version (`medpipe.data_md5`); its first 8 characters are the dataset digest.
    """
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    table = validated.split_table()[["label", "split"]]
    counts = table["split"].value_counts()
    with warnings.catch_warnings():  # MLflow registers its local artifact source twice and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = from_pandas(
            table, source=str(data_root), targets="label", name=data_root.name, digest=data_md5[:8] or None
        )
    tags = {
        "data_md5": data_md5,
        **{f"{split}_images": str(int(counts.get(split, 0))) for split in ("train", "val", "test")},
    }
    for attempt in range(_LOG_INPUT_ATTEMPTS):
        try:
            mlflow.log_input(dataset, context="training", tags=tags)
            return
        except mlflow.MlflowException as error:
            if attempt + 1 == _LOG_INPUT_ATTEMPTS or not lost_insert_race(error):
                raise
            log.debug("another run stored data version %s first; linking to it", data_md5[:8])


def checkpoint_key(params: Params, prepared: PreprocessResult, balanced: BalanceResult) -> str:
    """What a checkpoint must have been made for to be resumed: these params, shards and sampling plan.

    Args:
        params: The run's params.
        prepared: The preprocess step's result (its cache key).
        balanced: The balance step's result (its plan).

    Returns:
        "<params md5>:<preprocess cache key>:<plan md5>".
    """
    plan = load_plan(balanced.plan)
    plan_md5 = hashlib.md5(plan[0].tobytes() + plan[1].tobytes()).hexdigest()
    return f"{params.md5()}:{prepared.key}:{plan_md5}"


def has_checkpoint(params: Params, ws: Workspace) -> bool:
    """Whether an interrupted training run left a checkpoint (`--resume` continues it).

    Args:
        params: The run's params.
        ws: The workspace.

    Returns:
        True when outputs/checkpoint holds a run's progress: a finished run removes its checkpoint.
    """
    folders = [phase_folder(ws.out / "checkpoint", params, 0)]
    folders += [ws.out / "checkpoint" / PRETRAIN] if params.pretrain.epochs else []
    for folder in folders:
        try:
            progress = json.loads((folder / "progress.json").read_text())
        except (OSError, ValueError):
            continue
        if progress.get("run_id"):
            return True
    return False


def phases(params: Params) -> int:
    """How many models a run trains: 1, or with pseudo-labelling a teacher and `semi.rounds` students.

    Args:
        params: The run's params.

    Returns:
        The number of phases; the last one's model is the run's.
    """
    return 1 if params.semi.method == "none" else params.semi.rounds + 1


def phase_folder(folder: Path, params: Params, phase: int) -> Path:
    """A phase's checkpoint folder: the checkpoint folder itself for a one-phase run without pre-training,
    else `round<phase>/` inside it (0: the teacher; pre-training's is `pretrain/`).

    Args:
        folder: The checkpoint folder (outputs/checkpoint).
        params: The run's params.
        phase: The phase (0-based).

    Returns:
        Where that phase's checkpoint goes.
    """
    return folder if phases(params) == 1 and not params.pretrain.epochs else folder / f"round{phase}"


def log_curves(history: dict[str, list[float]] | None) -> None:
    """Log a finished phase's curves under the run's own names (for a phase logged in a section of its own
    whose model the run delivers after all).

    Args:
        history: The phase's per-epoch figures (Progress.history).
    """
    import mlflow

    for epoch, values in enumerate(zip(*((history or {}).get(k, []) for k in CURVES))):
        mlflow.log_metrics(curve_metrics(dict(zip(CURVES, values))), step=epoch)


def semi_tag(rounds: list[dict], method: str = "pseudo_label") -> str:
    """The run's `medpipe.semi` tag: what pseudo-labelling or consistency training added, round by round.

    Args:
        rounds: Each round's summary (semi.round_summary, consistency_summary); none when no unlabelled image
            was usable.
        method: semi.method.

    Returns:
        E.g. `pseudo_label: 812 of 1000 pool images at >= 0.95 (round 1); 850 (round 2)`, or with class_share
        `pseudo_label: 200 of 1000 pool images as the most confident 20 % of each class (round 1); 400 at 40 %
        (round 2)`.
    """
    if not rounds:
        return f"{method}: no usable unlabelled images"
    if method == "consistency":
        first = rounds[0]
        how = f"weak and strong views, threshold {first['threshold']}, mu {first['mu']}, weight {first['weight']}"
        parts = [f"{r['sure']} of {r['pool']} sure after round {r['round']}" for r in rounds]
        return f"consistency: {first['pool']} pool images ({how}); " + "; ".join(parts)
    first = rounds[0]
    parts = [f"{first['picked']} of {first['pool']} pool images {picked_by(first)} (round 1)"]
    parts += [f"{r['picked']}{share_note(r)} (round {r['round']})" for r in rounds[1:]]
    kept = "; none picked, the model before kept" if rounds[-1]["picked"] == 0 else ""
    return "pseudo_label: " + "; ".join(parts) + kept


def pseudo_label_round(
    teacher,
    params: Params,
    ws: Workspace,
    prepared: PreprocessResult,
    meta: dict,
    train: tuple[Shards, tuple],
    val: tuple[np.ndarray, np.ndarray],
    balance: BalanceResult,
    fresh: Progress,
    phase: int,
    resume: bool,
    callbacks: tuple,
):
    """One pseudo-labelling round inside the active run: the teacher labels the pool images it is sure of,
    and a student from the same initial weights trains on the train split and those (resumed from its
    checkpoint with `resume`). Its curves go to the section `round<phase>` unless it is the last phase.

    Args:
        teacher: The model of the phase before (its best weights).
        params: The run's params.
        ws: The workspace.
        prepared: The preprocess step's result (its `pool` split, the classes).
        meta: The preprocess meta (for the student's model: size, channels, classes, mean, std).
        train: (the train split's shards, the balance step's plan).
        val: (val images, val labels).
        balance: The balance step's result (class weights).
        fresh: The progress of a student that starts afresh (the run's key and run id).
        phase: The round (1-based; the teacher was phase 0).
        resume: Continue from the phase's checkpoint when there is one for the same inputs.
        callbacks: More Keras callbacks.

    Returns:
        (the student, its progress, the round's summary); (None, None, summary) when the teacher is sure
        of no pool image.
    """
    import mlflow

    shards, plan = train
    pool = Shards(prepared.folder, POOL)
    pseudo = pick(predict_pool(teacher, pool), params.semi, phase)
    summary = round_summary(pseudo, prepared.classes, len(pool), params.semi, phase)
    mlflow.log_dict(summary, f"semi/round{phase}.json")
    log.info(
        f"round {phase}: {summary['picked']} of {summary['pool']} pool images pseudo-labelled {summary['per_class']}"
    )
    if not len(pseudo.positions):  # a student would see the teacher's data again: the same model
        log.info(f"round {phase}: no pool image picked {picked_by(summary)}; the model before is kept")
        return None, None, summary
    joined = JoinedShards(shards, pool, pseudo.positions, pseudo.labels)
    joined_plan = student_plan(plan, len(shards), len(pseudo.positions))
    folder = phase_folder(ws.out / "checkpoint", params, phase)
    restored = load_checkpoint(folder, fresh.key) if resume else None
    steps = math.ceil(len(joined_plan[0]) / params.train.batch_size)
    student, progress = restored or (
        pretrained_start(new_model(params, meta, ws.base, steps), ws, params, fresh),
        fresh,
    )
    section = "" if phase == phases(params) - 1 else f"round{phase}"
    fit(student, joined, joined_plan, val, params, progress, folder, balance.class_weight, callbacks, section)
    return student, progress, summary


def consistency_round(
    teacher,
    params: Params,
    ws: Workspace,
    prepared: PreprocessResult,
    meta: dict,
    train: tuple[Shards, tuple],
    val: tuple[np.ndarray, np.ndarray],
    balance: BalanceResult,
    fresh: Progress,
    phase: int,
    resume: bool,
    callbacks: tuple,
):
    """One consistency round inside the active run: a student from the teacher's weights trains on the labelled
    batches and the pool's weak and strong views (pipeline.consistency), resumed from its checkpoint with
    `resume`. Its curves go to the section `round<phase>` unless it is the last phase.

    Args:
        teacher: The model of the phase before (its best weights).
        params: The run's params.
        ws: The workspace.
        prepared: The preprocess step's result (its `pool` split).
        meta: The preprocess meta (the student's model).
        train: (the train split's shards, the balance step's plan).
        val: (val images, val labels).
        balance: The balance step's result (class weights, which weigh the labelled term).
        fresh: The progress of a student that starts afresh (the run's key and run id).
        phase: The round (1-based; the teacher was phase 0).
        resume: Continue from the phase's checkpoint when there is one for the same inputs.
        callbacks: More Keras callbacks.

    Returns:
        (the student, compiled as a plain classifier; its progress; the round's summary).
    """
    import keras
    import mlflow

    from pipeline.consistency import compile_student, consistency_feed, steps_per_epoch, sure_count

    shards, plan = train
    pool, training, semi = Shards(prepared.folder, POOL), params.train, params.semi
    folder = phase_folder(ws.out / "checkpoint", params, phase)
    steps = steps_per_epoch(len(plan[0]), len(pool), training.batch_size, semi.mu)
    restored = load_checkpoint(folder, fresh.key) if resume else None
    if restored:
        student, progress = restored
    else:
        student, progress = new_model(params, meta, ws.base, steps), fresh
        student.set_weights(teacher.get_weights())
        optimizer = keras.optimizers.Adam(learning_rate(training, steps))
        compile_student(student, optimizer, training, semi, balance.class_weight)
    log.info(f"round {phase}: consistency training on {len(pool)} pool images (mu {semi.mu})")

    def batches(start: int):
        n_classes = len(meta["classes"])
        return consistency_feed(shards, plan, pool, n_classes, training, params.balance.augment, semi, start)

    section = "" if phase == phases(params) - 1 else f"round{phase}"
    fit(student, shards, plan, val, params, progress, folder, None, callbacks, section, batches)
    plain = new_model(params, meta, ws.base, steps)  # saved and served like any classifier: no custom loss
    plain.set_weights(student.get_weights())
    plain.optimizer.build(plain.trainable_variables)  # saved with its slots, as a trained model is: loads quietly
    summary = {
        "round": phase,
        "method": "consistency",
        "threshold": semi.threshold,
        "mu": semi.mu,
        "weight": semi.weight,
        "pool": len(pool),
        "sure": sure_count(predict_pool(plain, pool), semi.threshold),
    }
    mlflow.log_dict(summary, f"semi/round{phase}.json")
    log.info(f"round {phase}: sure of {summary['sure']} of {summary['pool']} pool images at >= {semi.threshold}")
    return plain, progress, summary


PRETRAIN, ENCODER = "pretrain", "encoder.npz"  # pre-training's checkpoint folder; the encoder's file
PROBE_MAX = 2000  # labelled train images the k-NN probe reads at most


def probe_images(shards: Split, limit: int = PROBE_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` labelled train images, evenly spread over the split, for the k-NN probe.

    Args:
        shards: The train split.
        limit: The most images read.

    Returns:
        (uint8 images, class indices).
    """
    idx = np.unique(np.linspace(0, len(shards) - 1, min(len(shards), limit)).astype(np.int64))
    return shards.take(idx), np.asarray(shards.labels)[idx]


def run_encoder(ws: Workspace, params: Params, run_id: str) -> Path | None:
    """The encoder this run's pre-training made, if pre-training is on and has finished.

    Args:
        ws: The workspace (the checkpoint's `pretrain/` folder).
        params: The run's params (pretrain.epochs).
        run_id: The run's MLflow run id (a file another run left is not this run's).

    Returns:
        The encoder file, or None.
    """
    from pipeline.weights import read_about

    path = ws.out / "checkpoint" / PRETRAIN / ENCODER
    if not params.pretrain.epochs or not path.is_file():
        return None
    return path if read_about(path).get("run_id") == run_id else None


def pretrained_start(model, ws: Workspace, params: Params, fresh: Progress):
    """A fresh model given this run's pre-trained encoder, if there is one: a pseudo-labelling student
    starts where its teacher did.

    Args:
        model: A model from new_model.
        ws: The workspace.
        params: The run's params.
        fresh: The progress of a phase that starts afresh (the run id).

    Returns:
        The model.
    """
    from pipeline.model import load_encoder

    if (path := run_encoder(ws, params, fresh.run_id)) is not None:
        load_encoder(model, path)
    return model


def pretrain_phase(
    model,
    params: Params,
    ws: Workspace,
    prepared: PreprocessResult,
    shards: Shards,
    val: tuple[np.ndarray, np.ndarray],
    fresh: Progress,
    resume: bool,
) -> dict:
    """Self-supervised pre-training inside the active run (pipeline.pretrain): the encoder of `model` learns
    from the train and pool images, checkpointed each epoch (resumed with `resume`), and `model` gets the
    encoder's weights. The encoder file, its description and the `medpipe.pretrain` tag go to the run.

    Args:
        model: The classifier (from new_model; its encoder's weights are replaced).
        params: The run's params (pretrain, train.seed, train.xla, train.in_memory_mb).
        ws: The workspace (the checkpoint's `pretrain/` folder).
        prepared: The preprocess step's result (its pool split, when there is one).
        shards: The train split.
        val: (val images, val labels), for the probe.
        fresh: The progress of a pre-training that starts afresh (the run's key and run id).
        resume: Continue from the checkpoint when there is one for the same inputs.

    Returns:
        The encoder file's description (images, epochs, loss per epoch, k-NN probe before and after).
    """
    import keras
    import mlflow

    from pipeline.model import encoder_of
    from pipeline.pretrain import contrastive_model, pretrain_feed, pretrain_words, probe
    from pipeline.weights import save_encoder

    pretraining, training = params.pretrain, params.train
    folder = ws.out / "checkpoint" / PRETRAIN
    images: Split = shards
    if prepared.split_sizes.get(POOL, 0):
        pool = Shards(prepared.folder, POOL)
        images = JoinedShards(shards, pool, np.arange(len(pool)), np.full(len(pool), -1))  # labels unread
    labelled = probe_images(shards)
    seeds = [np.asarray(v) for v in _seed_states(model)]  # dropout's random state, which pre-training moves on
    restored = load_checkpoint(folder, fresh.key) if resume else None
    if restored:
        contrastive, progress = restored
        log.info(f"pretrain: resumed after epoch {progress.epoch}")
    else:
        with own_default_seeds(training.seed):  # the projection head's weights from the seed alone
            contrastive = contrastive_model(model, pretraining, training.xla)
        before = probe(encoder_of(model), labelled, val)
        progress = Progress(fresh.key, fresh.run_id, history={"pretrain_loss": [], "knn_before": [before]})
    history = cast(dict[str, list[float]], progress.history)
    log.info(f"pretrain: SimCLR on {len(images)} train and pool images, {pretraining.epochs} epochs")

    class Monitor(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            loss = float((logs or {})["loss"])
            history["pretrain_loss"].append(loss)
            progress.epoch = epoch + 1
            save_checkpoint(self.model, progress, folder, improved=False)
            faults.point("train.pretrain_epoch")
            mlflow.log_metric("pretrain_loss", loss, step=epoch)
            log.info(f"pretrain epoch {epoch + 1}/{pretraining.epochs}: loss {loss:.4f}")

    if progress.epoch < pretraining.epochs:
        data, steps = pretrain_feed(images, pretraining, training.seed, training.in_memory_mb, progress.epoch)
        contrastive.fit(
            data,
            epochs=pretraining.epochs,
            initial_epoch=progress.epoch,
            steps_per_epoch=steps,
            verbose=1 if sys.stdout.isatty() else 0,
            shuffle=False,
            callbacks=[Monitor()],
        )
    encoder = contrastive.get_layer("encoder")
    about = {
        "architecture": model.name,
        "input_shape": list(model.input_shape[1:]),
        "method": "simclr",
        "images": len(images),
        "epochs": pretraining.epochs,
        "temperature": pretraining.temperature,
        "batch_size": pretraining.batch_size,
        "projection": pretraining.projection,
        "seed": training.seed,
        "loss": history["pretrain_loss"],
        "knn": {"before": history["knn_before"][0], "after": probe(encoder, labelled, val)},
        "weights_sha256": weights_sha256(encoder.get_weights()),
        "run_id": fresh.run_id,
    }
    save_encoder(encoder, folder / ENCODER, about)
    encoder_of(model).set_weights(encoder.get_weights())  # the same layers: no need to read the file back
    for variable, value in zip(_seed_states(model), seeds):  # as a model built after a resume has it
        variable.assign(value)
    mlflow.log_artifact(str(folder / ENCODER), "encoder")
    mlflow.log_dict(about, "encoder/encoder.json")
    mlflow.log_metrics({"pretrain_knn_before": about["knn"]["before"], "pretrain_knn_after": about["knn"]["after"]})
    mlflow.set_tag("medpipe.pretrain", pretrain_words(about))
    log.info(pretrain_words(about))
    return about


def run_step(
    params: Params,
    ws: Workspace,
    validated: ValidationReport,
    prepared: PreprocessResult,
    balanced: BalanceResult,
    resume: bool = False,
    callbacks: tuple = (),
    run_tags: dict[str, str] | None = None,
) -> TrainResult:
    """Train params.model on the balanced train split inside an MLflow run; with `resume`, continue from
    the last checkpoint of an interrupted run with the same inputs (else start afresh).

    Args:
        params: The run's params (all of them are logged to the run).
        ws: The workspace (writes outputs/train and, while training, outputs/checkpoint).
        validated: The validate step's report.
        prepared: The preprocess step's result (the shards).
        balanced: The balance step's result (the sampling plan, class weights).
        resume: Continue from a matching checkpoint.
        callbacks: More Keras callbacks.
        run_tags: More tags for its MLflow run.

    Returns:
        The run id, model path, epochs run, best epoch, weights sha256, data md5 and resume epoch.
    """
    import mlflow

    meta, balance, training = read_meta(prepared.folder), balanced, params.train
    shards, plan = Shards(prepared.folder, "train"), load_plan(balance.plan)
    val = Shards(prepared.folder, "val")
    folder, key = ws.out / "checkpoint", checkpoint_key(params, prepared, balanced)
    backend = select(training.backend)  # before Keras is imported
    from pipeline.consistency import one_device

    if params.semi.method == "consistency":
        one_device(len(gpus(backend)))  # before the teacher trains
    if params.pretrain.epochs:
        one_device(len(gpus(backend)), "pretrain.epochs", "pre-training")
    scope, _ = configure_devices(training)  # first: GPU settings only apply before a GPU is touched
    configure_determinism(training.seed, training.determinism)
    if not resume:  # a fresh run: no phase of an earlier one is left for a later --resume to mix in
        shutil.rmtree(folder, ignore_errors=True)
    with scope:
        restored = load_checkpoint(phase_folder(folder, params, 0), key) if resume else None
        if restored and params.pretrain.epochs and run_encoder(ws, params, restored[1].run_id) is None:
            restored = None  # a teacher whose encoder is gone cannot be continued: pre-train again
        pretrained = read_progress(folder / PRETRAIN, key) if resume and params.pretrain.epochs else None
        model, progress = restored or (
            new_model(params, meta, ws.base, math.ceil(len(plan[0]) / training.batch_size)),
            Progress(key, pretrained.run_id if pretrained else ""),  # killed while pre-training: its run
        )
    resumed_from = progress.epoch
    planned = phases(params) - 1
    last = planned if prepared.split_sizes.get(POOL, 0) else 0  # no usable unlabelled image: no student
    final = ws.out / "train"
    # an exception marks the run FAILED
    with start_run(params, ws, validated, progress, run_tags) as run, replace_dir(final) as out:
        progress.run_id = run.info.run_id
        mlflow.set_tags(owner_tags())  # a killed process's run is closed as KILLED by the next command
        mlflow.log_dict({"before": balance.counts_before, "after": balance.counts_after}, "balance/class_counts.json")
        val_data, section = (val.read(), val.labels), "round0" if last else ""  # the teacher's curves
        if params.pretrain.epochs and not restored:
            with configure_devices(training)[0]:
                pretrain_phase(model, params, ws, prepared, shards, val_data, Progress(key, run.info.run_id), resume)
        if (encoder := run_encoder(ws, params, run.info.run_id)) is not None:
            shutil.copy2(encoder, out / ENCODER)  # beside the model: `model.weights` reuses it
        fit(
            model,
            shards,
            plan,
            val_data,
            params,
            progress,
            phase_folder(folder, params, 0),
            balance.class_weight,
            callbacks,
            section,
        )
        rounds = []
        for phase in range(1, last + 1):  # pseudo-labelling: the model so far teaches a new student
            learn = consistency_round if params.semi.method == "consistency" else pseudo_label_round
            with configure_devices(training)[0]:  # a scope is entered once: a fresh one per round
                student, student_progress, summary = learn(
                    model,
                    params,
                    ws,
                    prepared,
                    meta,
                    (shards, plan),
                    val_data,
                    balance,
                    Progress(key, run.info.run_id),
                    phase,
                    resume,
                    callbacks,
                )
            rounds.append(summary)
            if student is None:
                log_curves(progress.history)  # the model kept gets the run's curves under their own names
                break
            model, progress = student, student_progress
        if planned and not last:
            log.info("semi: no usable unlabelled image (pool.csv); trained on the labelled images alone")
        if planned:
            (out / "semi.json").write_text(
                json.dumps({"method": params.semi.method, "rounds": rounds}, indent=2) + "\n"
            )
            mlflow.set_tag("medpipe.semi", semi_tag(rounds, params.semi.method))
        model.save(out / "model.keras")
        sha = weights_sha256(model.get_weights())
        mlflow.set_tag("medpipe.weights_sha256", sha)
        data_md5 = mlflow.get_run(progress.run_id).data.tags.get("medpipe.data_md5", "")
        result = TrainResult(
            progress.run_id,
            str((final / "model.keras").relative_to(ws.base)),
            progress.epoch,
            progress.best_epoch + 1 if progress.best_epoch >= 0 else progress.epoch,
            sha,
            data_md5,
            resumed_from,
        )
        (out / "run.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
        (out / "history.json").write_text(json.dumps(progress.history or {k: [] for k in CURVES}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)  # finished: nothing left to resume
    return result


def load_result(ws: Workspace) -> TrainResult:
    """Read back what the train step wrote (for a step run on its own, e.g. by DVC).

    Args:
        ws: The workspace (reads outputs/train/run.json).

    Returns:
        The TrainResult run_step returned.

    Raises:
        MedpipeError: No model has been trained in this workspace.
    """
    return read_result(ws.out / "train" / "run.json", "train", lambda raw: TrainResult(**raw))
