"""Augmentation inside training's tf.data pipeline: stateless, seeded ops on the flagged images of a batch,
so the same plan and seed give the same images on every run and after a resume."""

import math

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
