"""Augmentation of the flagged images of a batch, written once for both backends: the random numbers are
NumPy draws seeded by (seed, epoch, batch), the pixel work keras.ops (augment_ops). The same plan and seed
give the same images on every run and after a resume, on TensorFlow (inside training's tf.data pipeline:
augment_batch) and on JAX (pipeline.feed, compiled)."""

import math

import numpy as np

from pipeline.config import AugmentParams


def augments(augmentation: AugmentParams) -> bool:
    """Whether any augmentation op is switched on.

    Args:
        augmentation: The augment section.

    Returns:
        True when flip or any non-zero range is set.
    """
    return augmentation.flip or any(
        (
            augmentation.rotation,
            augmentation.shift,
            augmentation.zoom,
            augmentation.brightness,
            augmentation.contrast,
            augmentation.noise,
        )
    )


N_DRAWS = 7  # flip, rotation, zoom, shift x, shift y, brightness, contrast


def draws(seed: int, epoch: int, batch: int, size: int, stream: int = 0) -> np.ndarray:
    """The per-image random numbers of one batch, uniform in [-1, 1): a function of (seed, epoch, batch) only.

    Args:
        seed: train.seed.
        epoch: The epoch.
        batch: The batch within the epoch.
        size: Images in the batch.
        stream: The seed's last word: 0 for training batches, others for other views of a batch (consistency).

    Returns:
        (size, N_DRAWS) float32.
    """
    rng = np.random.default_rng([seed, epoch, batch, stream])
    return rng.uniform(-1.0, 1.0, (size, N_DRAWS)).astype(np.float32)


def noise_field(seed: int, epoch: int, batch: int, shape: tuple[int, ...], stream: int = 0) -> np.ndarray:
    """Standard normal noise for one batch (augment.noise), from its own stream of (seed, epoch, batch).

    Args:
        seed: train.seed.
        epoch: The epoch.
        batch: The batch within the epoch.
        shape: The batch's shape (b, h, w, c).
        stream: The draws' stream (see draws); the noise takes the word after it.

    Returns:
        float32 noise of that shape.
    """
    return np.random.default_rng([seed, epoch, batch, stream + 1]).standard_normal(shape, dtype=np.float32)


def affine_transforms(d: np.ndarray, h: int, w: int, augmentation: AugmentParams) -> np.ndarray:
    """Per-image inverse affine transforms (rotation, zoom, shift about the centre) as Keras takes them.

    Args:
        d: The batch's draws (b, N_DRAWS).
        h: Image height.
        w: Image width.
        augmentation: The augment section.

    Returns:
        (b, 8) float32: output pixel (x, y) samples the input at (a0 x + a1 y + a2, b0 x + b1 y + b2).
    """
    angle = d[:, 1] * augmentation.rotation * (math.pi / 180.0)
    zoom = 1.0 + d[:, 2] * augmentation.zoom
    dx, dy = d[:, 3] * augmentation.shift * w, d[:, 4] * augmentation.shift * h
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    ox, oy = cx + dx, cy + dy
    zeros = np.zeros_like(cos)
    rows = [cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy, zeros, zeros]
    return np.stack(rows, axis=1).astype(np.float32)


def augment_ops(x, flags, d, transforms, noise, augmentation: AugmentParams):
    """Augment the flagged images of a float [0, 1] batch with keras.ops (any backend, traceable).

    The same ops as augment_batch: flip, one bilinear warp with reflected borders, brightness, contrast,
    Gaussian noise; the output depends only on the inputs.

    Args:
        x: The batch (b, h, w, c), float32 in [0, 1].
        flags: (b,) bool: which images to augment.
        d: The batch's draws (b, N_DRAWS).
        transforms: affine_transforms of the draws (b, 8).
        noise: noise_field of the batch, or None when augment.noise is 0.
        augmentation: The augment section.

    Returns:
        The batch with the flagged images augmented and clipped to [0, 1], the others as they were.
    """
    from keras import ops

    per_image = lambda v: ops.reshape(v, (-1, 1, 1, 1))  # noqa: E731
    y = x
    if augmentation.flip:
        y = ops.where(per_image(d[:, 0] < 0), ops.flip(y, axis=2), y)
    if augmentation.rotation or augmentation.zoom or augmentation.shift:
        y = ops.image.affine_transform(y, transforms, interpolation="bilinear", fill_mode="reflect")
    if augmentation.brightness:
        y = y + per_image(d[:, 5] * augmentation.brightness)
    if augmentation.contrast:
        mean = ops.mean(y, axis=(1, 2, 3), keepdims=True)
        y = (y - mean) * per_image(1.0 + d[:, 6] * augmentation.contrast) + mean
    if augmentation.noise and noise is not None:
        y = y + augmentation.noise * noise
    return ops.where(per_image(flags), ops.clip(y, 0.0, 1.0), x)


def augment_batch(x, flags, epoch, batch, seed: int, augmentation: AugmentParams):
    """augment_ops inside a tf.data pipeline: the batch's draws come from NumPy through tf.numpy_function,
    so TensorFlow and JAX runs augment with the same numbers from the same (seed, epoch, batch).

    Args:
        x: The batch, float [0, 1] (b, h, w, c), a graph tensor.
        flags: (b,) bool: which images to augment.
        epoch: The epoch (int64 scalar tensor).
        batch: The batch within the epoch (int64 scalar tensor).
        seed: train.seed.
        augmentation: The augment section (which ops, how strong).

    Returns:
        The batch with the flagged images augmented and clipped to [0, 1], the others as they were.
    """
    import tensorflow as tf

    shape = tf.shape(x)

    def host(e, b, n, h, w):
        d = draws(seed, int(e), int(b), int(n))
        return d, affine_transforms(d, int(h), int(w), augmentation)

    d, transforms = tf.numpy_function(
        host, [epoch, batch, shape[0], shape[1], shape[2]], [tf.float32, tf.float32], stateful=False
    )
    d, transforms = tf.ensure_shape(d, [None, N_DRAWS]), tf.ensure_shape(transforms, [None, 8])
    noise = None
    if augmentation.noise:
        field = tf.numpy_function(
            lambda e, b, s: noise_field(seed, int(e), int(b), tuple(int(v) for v in s)),
            [epoch, batch, shape],
            tf.float32,
            stateful=False,
        )
        noise = tf.reshape(field, shape)
    return augment_ops(x, flags, d, transforms, noise, augmentation)
