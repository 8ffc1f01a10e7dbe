"""Augmentation inside training's tf.data pipeline: stateless, seeded ops on the flagged images of a batch,
so the same plan and seed give the same images on every run and after a resume."""

import math

from pipeline.config import AugmentParams


def augments(ap: AugmentParams) -> bool:
    """Whether any augmentation op is switched on."""
    return ap.flip or any((ap.rotation, ap.shift, ap.zoom, ap.brightness, ap.contrast, ap.noise))


def _affine(b, h, w, u, ap: AugmentParams):
    """Per-image inverse affine transforms (rotation, zoom, shift about the centre), shape (b, 8)."""
    import tensorflow as tf

    angle = u(1, ap.rotation) * (math.pi / 180.0)
    zoom, dx, dy = 1.0 + u(2, ap.zoom), u(3, ap.shift) * w, u(4, ap.shift) * h
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    ox, oy = cx + dx, cy + dy  # the output pixel (ox, oy) samples the input centre
    zeros = tf.zeros([b])
    return tf.stack([cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy, zeros, zeros], axis=1)


def augment_batch(x, flags, seed, ap: AugmentParams):
    """Augment the flagged images of a float [0, 1] batch (b, h, w, c); `seed` is a shape-(2,) int tensor.

    Ops: horizontal flip, rotation, zoom and shift (one bilinear warp, reflected borders), brightness,
    contrast, Gaussian noise. Stateless random ops: the output depends only on the inputs and seed.
    """
    import tensorflow as tf

    b, h, w = tf.shape(x)[0], tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8)
    u = lambda i, r: tf.random.stateless_uniform([b], seeds[i], -r, r)  # noqa: E731
    y = x
    if ap.flip:
        y = tf.where((u(0, 1.0) < 0)[:, None, None, None], tf.reverse(y, axis=[2]), y)
    if ap.rotation or ap.zoom or ap.shift:
        y = tf.raw_ops.ImageProjectiveTransformV3(
            images=y, transforms=_affine(b, h, w, u, ap), output_shape=tf.shape(x)[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="REFLECT")
    if ap.brightness:
        y = y + u(5, ap.brightness)[:, None, None, None]
    if ap.contrast:
        mean = tf.reduce_mean(y, axis=[1, 2, 3], keepdims=True)
        y = (y - mean) * (1.0 + u(6, ap.contrast))[:, None, None, None] + mean
    if ap.noise:
        y = y + ap.noise * tf.random.stateless_normal(tf.shape(y), seeds[7])
    return tf.where(tf.reshape(flags, [-1, 1, 1, 1]), tf.clip_by_value(y, 0.0, 1.0), x)
