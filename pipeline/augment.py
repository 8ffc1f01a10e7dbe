"""Augmentation of the flagged images of a batch, seeded, so the same plan and seed give the same images on
every run and after a resume: stateless TensorFlow ops inside training's tf.data pipeline (augment_batch),
or NumPy draws and keras.ops for any backend (augment_ops, train.backend: jax)."""

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


def _affine(b, h, w, u, augmentation: AugmentParams):
    """Per-image inverse affine transforms (rotation, zoom, shift about the centre), shape (b, 8)."""
    import tensorflow as tf

    angle = u(1, augmentation.rotation) * (math.pi / 180.0)
    zoom, dx, dy = 1.0 + u(2, augmentation.zoom), u(3, augmentation.shift) * w, u(4, augmentation.shift) * h
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    ox, oy = cx + dx, cy + dy  # the output pixel (ox, oy) samples the input centre
    zeros = tf.zeros([b])
    return tf.stack([cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy, zeros, zeros], axis=1)


def augment_batch(x, flags, seed, augmentation: AugmentParams):
    """Augment the flagged images of a float [0, 1] batch (b, h, w, c); `seed` is a shape-(2,) int tensor.

    Ops: horizontal flip, rotation, zoom and shift (one bilinear warp, reflected borders), brightness,
    contrast, Gaussian noise. Stateless random ops: the output depends only on the inputs and seed.

    Args:
        x: The batch, float [0, 1] (b, h, w, c).
        flags: (b,) bool: which images to augment.
        seed: Shape-(2,) int tensor.
        augmentation: The augment section (which ops, how strong).

    Returns:
        The batch with the flagged images augmented and clipped to [0, 1], the others as they were.
    """
    import tensorflow as tf

    b, h, w = tf.shape(x)[0], tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8)
    u = lambda i, r: tf.random.stateless_uniform([b], seeds[i], -r, r)  # noqa: E731
    y = x
    if augmentation.flip:
        y = tf.where((u(0, 1.0) < 0)[:, None, None, None], tf.reverse(y, axis=[2]), y)
    if augmentation.rotation or augmentation.zoom or augmentation.shift:
        y = tf.raw_ops.ImageProjectiveTransformV3(
            images=y,
            transforms=_affine(b, h, w, u, augmentation),
            output_shape=tf.shape(x)[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )
    if augmentation.brightness:
        y = y + u(5, augmentation.brightness)[:, None, None, None]
    if augmentation.contrast:
        mean = tf.reduce_mean(y, axis=[1, 2, 3], keepdims=True)
        y = (y - mean) * (1.0 + u(6, augmentation.contrast))[:, None, None, None] + mean
    if augmentation.noise:
        y = y + augmentation.noise * tf.random.stateless_normal(tf.shape(y), seeds[7])
    return tf.where(tf.reshape(flags, [-1, 1, 1, 1]), tf.clip_by_value(y, 0.0, 1.0), x)


# The same augmentation for any Keras backend (train.backend: jax): the random draws come from NumPy,
# seeded by (seed, epoch, batch); the pixel work is keras.ops, compiled with the training step's backend.
N_DRAWS = 7  # flip, rotation, zoom, shift x, shift y, brightness, contrast


def draws(seed: int, epoch: int, batch: int, size: int) -> np.ndarray:
    """The per-image random numbers of one batch, uniform in [-1, 1): a function of (seed, epoch, batch) only.

    Args:
        seed: train.seed.
        epoch: The epoch.
        batch: The batch within the epoch.
        size: Images in the batch.

    Returns:
        (size, N_DRAWS) float32.
    """
    rng = np.random.default_rng([seed, epoch, batch, 0])
    return rng.uniform(-1.0, 1.0, (size, N_DRAWS)).astype(np.float32)


def noise_field(seed: int, epoch: int, batch: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise for one batch (augment.noise), from its own stream of (seed, epoch, batch).

    Args:
        seed: train.seed.
        epoch: The epoch.
        batch: The batch within the epoch.
        shape: The batch's shape (b, h, w, c).

    Returns:
        float32 noise of that shape.
    """
    return np.random.default_rng([seed, epoch, batch, 1]).standard_normal(shape, dtype=np.float32)


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
