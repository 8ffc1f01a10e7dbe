"""Consistency training on the unlabelled pool (params `semi.method: consistency`, FixMatch-style).

Each batch holds `train.batch_size` labelled images (the balance plan's, augmented as in supervised
training), then `semi.mu` times as many pool images twice: weakly augmented (`balance.augment`) and
strongly augmented (`semi.strong`). The loss is the labelled images' cross-entropy plus `semi.weight`
times the cross-entropy of the strong views against the class the model gives the weak view, for the
pool images whose weak-view top probability reaches `semi.threshold` (no gradient through the weak view;
Sohn et al. 2020, FixMatch). With `semi.align`, the weak views' probabilities are first divided by their
mean over the batch and renormalised (distribution alignment towards uniform classes, after ReMixMatch,
with the batch's mean as the estimate), so one class the model favours does not take over the targets.
The student starts from the teacher's best weights. An epoch is one pass over the pool. Batches are a
pure function of (seed, epoch, batch), written once for both backends with keras.ops, so a run is
deterministic and resumes like supervised training.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.augment import affine_transforms, augments, draws, noise_field
from pipeline.config import AugmentParams, SemiParams, TrainParams
from pipeline.errors import ConfigError
from pipeline.feed import _on_device, epoch_order
from pipeline.shards import Split

# seed words beside augment's draws (0) and noise (1) and the epoch order's (2)
WEAK_STREAM, STRONG_STREAM, POOL_ORDER_STREAM, LABELLED_PASS_STREAM = 3, 5, 7, 8


def layout(batch_size: int, mu: int) -> tuple[int, int]:
    """Rows of a consistency batch: (labelled, pool images per view).

    Args:
        batch_size: train.batch_size.
        mu: semi.mu.

    Returns:
        (batch_size, mu * batch_size); a batch has labelled + 2 * pool rows.
    """
    return batch_size, mu * batch_size


def steps_per_epoch(n_labelled: int, n_pool: int, batch_size: int, mu: int) -> int:
    """Batches in a consistency epoch: one pass over the pool, and at least one over the labelled plan.

    Args:
        n_labelled: The balance plan's length.
        n_pool: Images in the pool.
        batch_size: train.batch_size.
        mu: semi.mu.

    Returns:
        The number of batches.
    """
    labelled, unlabelled = layout(batch_size, mu)
    return max(math.ceil(n_labelled / labelled), math.ceil(n_pool / unlabelled), 1)


def labelled_order(seed: int, epoch: int, n: int, length: int) -> np.ndarray:
    """The plan positions an epoch's labelled rows take, in order: supervised training's permutation of the
    epoch first, then further permutations of (seed, epoch, pass) until `length` are drawn.

    Args:
        seed: train.seed.
        epoch: The epoch.
        n: The plan's length.
        length: Positions needed.

    Returns:
        `length` positions, int64.
    """
    passes = [epoch_order(seed, epoch, n)]
    while sum(map(len, passes)) < length:
        rng = np.random.default_rng([seed, epoch, len(passes), LABELLED_PASS_STREAM])
        passes.append(rng.permutation(n))
    return np.concatenate(passes)[:length]


def pool_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of the pool that epoch `epoch` reads it in.

    Args:
        seed: train.seed.
        epoch: The epoch.
        n: Images in the pool.

    Returns:
        A permutation of range(n), int64.
    """
    return np.random.default_rng([seed, epoch, 2**32 - 1, POOL_ORDER_STREAM]).permutation(n)


def wrapped(order: np.ndarray, batch: int, size: int) -> np.ndarray:
    """Batch `batch` of `size` rows from `order`, wrapping around its end (every batch is full).

    Args:
        order: An epoch's order.
        batch: The batch.
        size: Rows per batch.

    Returns:
        `size` entries of `order`.
    """
    return order[(batch * size + np.arange(size)) % len(order)]


def view(
    x: np.ndarray,
    mask: np.ndarray,
    augmentation: AugmentParams,
    fn: Callable | None,
    scale: Callable,
    at: tuple[int, int, int],
    stream: int,
) -> Any:
    """One view of a uint8 batch: scaled, its masked images augmented with the draws of (seed, epoch, batch)
    = `at` and `stream`.

    Args:
        x: uint8 images (N, h, w, channels).
        mask: Which images to augment (N bools).
        augmentation: The augment section.
        fn: The augmenting batch function (feed._on_device(augmentation)), or None: scale only.
        scale: The scaling batch function (feed._on_device(None)).
        at: (seed, epoch, batch).
        stream: The draws' stream word.

    Returns:
        float32 images in [0, 1] (a backend tensor).
    """
    if fn is None or not mask.any():
        return scale(x)
    d = draws(*at, len(x), stream)
    noise = noise_field(*at, x.shape, stream) if augmentation.noise else None
    return fn(x, mask, d, affine_transforms(d, x.shape[1], x.shape[2], augmentation), noise)


def consistency_feed(
    shards: Split,
    plan: tuple[np.ndarray, np.ndarray],
    pool: Split,
    n_classes: int,
    training: TrainParams,
    weak: AugmentParams,
    semi: SemiParams,
    start_epoch: int = 0,
):
    """Batches of (labelled | weak pool views | strong pool views, one-hot labels | zeros), for epochs
    start_epoch..training.epochs-1, as one Keras PyDataset (any backend).

    An epoch is one pass over the pool (steps_per_epoch), the labelled plan taken as often as that needs
    (labelled_order); batches are full, the last wrapping to the start. The labelled rows of the epoch's
    first plan-length of batches get the same order and augmentations as supervised training's.

    Args:
        shards: The train split's shards.
        plan: (index into the split, augment flags) from the balance step.
        pool: The pool split (its labels are not read).
        n_classes: How many classes.
        training: The train params (batch_size, epochs, seed, in_memory_mb).
        weak: The labelled images' and the weak views' augmentation (balance.augment).
        semi: The semi params (mu, strong).
        start_epoch: The first epoch (a resumed run's).

    Returns:
        (the PyDataset, steps per epoch).
    """
    import keras
    from keras import ops

    index, flags = plan
    n, seed = len(index), training.seed
    labelled, unlabelled = layout(training.batch_size, semi.mu)
    steps = steps_per_epoch(n, len(pool), training.batch_size, semi.mu)
    fits = lambda s: s.nbytes <= training.in_memory_mb * 2**20  # noqa: E731
    table, pool_table = (shards.read() if fits(shards) else None), (pool.read() if fits(pool) else None)
    eye = np.eye(n_classes, dtype=np.float32)
    zeros = np.zeros((2 * unlabelled, n_classes), dtype=np.float32)
    scale = _on_device(None)
    weak_fn, strong_fn = (_on_device(a) if augments(a) else None for a in (weak, semi.strong))

    class ConsistencyFeed(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def __len__(self) -> int:
            return steps * (training.epochs - start_epoch)

        def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
            found = self.orders.get(epoch)
            if found is None:
                found = (labelled_order(seed, epoch, n, steps * labelled), pool_order(seed, epoch, len(pool)))
                self.orders = {epoch: found}  # one epoch at a time
            return found

        def __getitem__(self, i: int):
            epoch, batch = start_epoch + i // steps, i % steps
            order, p_order = self.order(epoch)
            at = (seed, epoch, batch)
            positions = wrapped(order, batch, labelled)
            idx = index[positions]
            x = table[idx] if table is not None else shards.take(idx)
            xl = view(x, flags[positions], weak, weak_fn, scale, at, 0)  # stream 0: augment.draws, supervised's numbers
            p_idx = wrapped(p_order, batch, unlabelled)
            xp = pool_table[p_idx] if pool_table is not None else pool.take(p_idx)
            every = np.ones(unlabelled, dtype=bool)
            xw = view(xp, every, weak, weak_fn, scale, at, WEAK_STREAM)
            xs = view(xp, every, semi.strong, strong_fn, scale, at, STRONG_STREAM)
            return ops.concatenate([xl, xw, xs], axis=0), np.concatenate([eye[shards.labels[idx]], zeros])

    return ConsistencyFeed(), steps


@functools.cache
def registered() -> tuple:
    """The loss and metric classes, registered with Keras once per process (checkpoints name them).

    Returns:
        (ConsistencyLoss, LabelledAccuracy).
    """
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="medpipe")
    class ConsistencyLoss(keras.losses.Loss):
        """Labelled cross-entropy + weight * confident pool images' strong-view cross-entropy (see module)."""

        def __init__(
            self,
            labelled: int,
            unlabelled: int,
            threshold: float,
            weight: float,
            class_weights: list[float] | None = None,
            align: bool = False,
            name: str = "consistency",
            reduction: str = "sum_over_batch_size",
            dtype=None,
        ) -> None:
            super().__init__(name=name, reduction=reduction, dtype=dtype)
            self.labelled, self.unlabelled = labelled, unlabelled
            self.threshold, self.weight, self.class_weights = threshold, weight, class_weights
            self.align = align

        def call(self, y_true, y_pred):
            b, u = self.labelled, self.unlabelled
            eps = keras.config.epsilon()
            p = ops.clip(y_pred, eps, 1.0 - eps)
            supervised = -ops.sum(y_true[:b] * ops.log(p[:b]), axis=-1)
            if self.class_weights:
                weights = ops.cast(ops.convert_to_tensor(self.class_weights), p.dtype)
                supervised = supervised * ops.sum(y_true[:b] * weights, axis=-1)
            weak = ops.stop_gradient(y_pred[b : b + u])
            if self.align:  # distribution alignment: the batch's mean prediction divided out, towards uniform
                weak = weak / ops.maximum(ops.mean(weak, axis=0, keepdims=True), eps)
                weak = weak / ops.sum(weak, axis=-1, keepdims=True)
            sure = ops.cast(ops.max(weak, axis=-1) >= self.threshold, p.dtype)
            target = ops.one_hot(ops.argmax(weak, axis=-1), ops.shape(weak)[-1], dtype=p.dtype)
            unsupervised = -ops.sum(target * ops.log(p[b + u : b + 2 * u]), axis=-1) * sure
            return ops.mean(supervised) + self.weight * ops.mean(unsupervised)

        def get_config(self) -> dict:
            return {
                **super().get_config(),
                "labelled": self.labelled,
                "unlabelled": self.unlabelled,
                "threshold": self.threshold,
                "weight": self.weight,
                "class_weights": self.class_weights,
                "align": self.align,
            }

    @keras.saving.register_keras_serializable(package="medpipe")
    class LabelledAccuracy(keras.metrics.Mean):
        """Accuracy over a batch's labelled rows only (the first `labelled`)."""

        def __init__(self, labelled: int, name: str = "accuracy", dtype=None) -> None:
            super().__init__(name=name, dtype=dtype)
            self.labelled = labelled

        def update_state(self, y_true, y_pred, sample_weight=None):
            b = self.labelled
            hit = ops.cast(ops.argmax(y_true[:b], axis=-1) == ops.argmax(y_pred[:b], axis=-1), "float32")
            return super().update_state(hit)

        def get_config(self) -> dict:
            return {**super().get_config(), "labelled": self.labelled}

    return ConsistencyLoss, LabelledAccuracy


def compile_student(model, optimizer, training: TrainParams, semi: SemiParams, class_weight: dict | None) -> None:
    """Compile `model` for consistency training (the loss and the labelled rows' accuracy).

    Args:
        model: The Keras model (the teacher's weights).
        optimizer: A fresh optimizer.
        training: The train params (batch_size, xla).
        semi: The semi params (mu, threshold, weight).
        class_weight: The balance step's weight by class index, or None.
    """
    loss_class, accuracy_class = registered()
    labelled, unlabelled = layout(training.batch_size, semi.mu)
    n_classes = int(model.output_shape[-1])
    weights = [float(class_weight.get(k, 1.0)) for k in range(n_classes)] if class_weight else None
    model.compile(
        optimizer=optimizer,
        loss=loss_class(labelled, unlabelled, semi.threshold, semi.weight, weights, semi.align),
        metrics=[accuracy_class(labelled)],
        jit_compile=training.xla,
    )


def sure_count(proba: np.ndarray, threshold: float) -> int:
    """How many pool images the model gives a top probability of at least `threshold`.

    Args:
        proba: (N, classes) probabilities.
        threshold: semi.threshold.

    Returns:
        The count.
    """
    return int((np.asarray(proba).max(axis=1) >= threshold).sum()) if len(proba) else 0


def one_device(n_gpus: int, field: str = "semi.method", what: str = "consistency") -> None:
    """Refuse several GPUs: data parallelism splits a batch between them, and a consistency batch's rows
    are laid out labelled first, then the two views (layout), which a split would break (as it would
    pre-training's pairs of views).

    Args:
        n_gpus: The GPUs the backend sees.
        field: The params field that asks for the training.
        what: Its name in the message.

    Raises:
        ConfigError: More than one.
    """
    if n_gpus > 1:
        raise ConfigError(
            field,
            f"{what} trains on one device and this machine shows {n_gpus} GPUs: pick one with CUDA_VISIBLE_DEVICES",
        )
