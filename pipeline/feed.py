"""Training batches for any Keras backend (train.backend: jax): a Keras PyDataset over the uint8 shards,
with no TensorFlow in it.

Like the tf.data pipeline of pipeline.train, epoch k's order and augmentations are functions of (seed, k)
only: the batches are one sequence over the remaining epochs, each a pure function of its position, so a
run resumed at epoch k sees exactly the batches the uninterrupted run saw. The order and the random draws
come from NumPy (seeded generators); the uint8 batch is scaled and augmented by keras.ops, compiled by JAX
(on the GPU when there is one).
"""

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.augment import affine_transforms, augment_ops, augments, draws, noise_field
from pipeline.config import AugmentParams, TrainParams
from pipeline.shards import Split

ORDER_STREAM = 2  # the last word of an epoch order's seed: draws use 0, noise 1


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of the plan that epoch `epoch` trains in.

    Args:
        seed: train.seed.
        epoch: The epoch.
        n: The plan's length.

    Returns:
        A permutation of range(n), int64.
    """
    return np.random.default_rng([seed, epoch, 2**32 - 1, ORDER_STREAM]).permutation(n)


def _scale(x):
    """uint8 images to float32 in [0, 1] (keras.ops: on the accelerator when the backend has one)."""
    from keras import ops

    return ops.cast(x, "float32") / 255.0


def _on_device(augmentation: AugmentParams | None):
    """The batch function: uint8 in, float32 [0, 1] out, augmented when `augmentation` is given. On JAX it
    is compiled once, and the uint8 batch goes to the device, where it is scaled and augmented."""
    import keras

    fn: Callable[..., Any] = _scale
    if augmentation is not None:

        def fn(x, flags, d, transforms, noise):
            return augment_ops(_scale(x), flags, d, transforms, noise, augmentation)

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def train_feed(
    shards: Split,
    plan: tuple[np.ndarray, np.ndarray],
    n_classes: int,
    training: TrainParams,
    augmentation: AugmentParams,
    start_epoch: int = 0,
):
    """Batches of (image in [0, 1], one-hot label) for epochs start_epoch..training.epochs-1, as one sequence.

    Per epoch: a permutation of the plan drawn from (seed, epoch); images gathered (from memory, or from the
    memory-mapped shards above train.in_memory_mb), scaled, and the plan's flagged ones augmented with draws
    from (seed, epoch, batch). Keras reads `steps` of it per epoch (fit's steps_per_epoch).

    Args:
        shards: The train split's shards (or arrays in memory).
        plan: (index into the split, augment flags) from the balance step.
        n_classes: How many classes (the one-hot width).
        training: The train params (batch_size, epochs, seed, in_memory_mb).
        augmentation: The augment params.
        start_epoch: The first epoch (a resumed run's).

    Returns:
        (the keras.utils.PyDataset, steps per epoch).
    """
    import keras

    index, flags = plan
    n, size = len(index), training.batch_size
    steps = math.ceil(n / size)
    table = shards.read() if shards.nbytes <= training.in_memory_mb * 2**20 else None
    pixels = (lambda idx: table[idx]) if table is not None else shards.take  # noqa: E731
    eye = np.eye(n_classes, dtype=np.float32)
    augment = _on_device(augmentation) if augments(augmentation) and bool(flags.any()) else None
    scale = _on_device(None)
    seed = training.seed

    class TrainFeed(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.orders: dict[int, np.ndarray] = {}

        def __len__(self) -> int:
            return steps * (training.epochs - start_epoch)

        def order(self, epoch: int) -> np.ndarray:
            found = self.orders.get(epoch)
            if found is None:
                found = epoch_order(seed, epoch, n)
                self.orders = {epoch: found}  # one epoch at a time
            return found

        def __getitem__(self, i: int):
            epoch, batch = start_epoch + i // steps, i % steps
            positions = self.order(epoch)[batch * size : (batch + 1) * size]
            idx = index[positions]
            x, y = pixels(idx), eye[shards.labels[idx]]
            if augment is None:
                return scale(x), y
            d, (h, w) = draws(seed, epoch, batch, len(idx)), x.shape[1:3]
            noise = noise_field(seed, epoch, batch, x.shape) if augmentation.noise else None
            return augment(x, flags[positions], d, affine_transforms(d, h, w, augmentation), noise), y

    return TrainFeed(), steps
