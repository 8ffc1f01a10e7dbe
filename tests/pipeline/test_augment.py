"""pipeline.augment: seeded augmentation of the flagged images only, one implementation for both backends."""

import numpy as np

from pipeline.augment import augment_batch
from pipeline.config import AugmentParams


def test_the_tf_data_form_augments_exactly_as_the_keras_ops_form_with_the_same_draws():
    import tensorflow as tf

    x, flags = _batch(), np.array([True, False, True, False, True, True])
    ap = AugmentParams(noise=0.05)

    @tf.function  # a graph, as inside tf.data's map
    def in_graph(images, picked, epoch, batch):
        return augment_batch(images, picked, epoch, batch, 7, ap)

    out = np.asarray(in_graph(x, flags, tf.constant(1, tf.int64), tf.constant(2, tf.int64)))
    assert np.allclose(out, _neutral(x, flags, ap, seed=(7, 1, 2)), atol=1e-6)  # one implementation, two callers
    assert np.array_equal(out[~flags], x[~flags])
    again = np.asarray(in_graph(x, flags, tf.constant(1, tf.int64), tf.constant(2, tf.int64)))
    assert np.array_equal(out, again)


def _batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(size=(6, 16, 16, 1)).astype(np.float32)


def _neutral(x, flags, ap, seed=(7, 1, 2)):
    from pipeline.augment import affine_transforms, augment_ops, draws, noise_field

    d = draws(*seed, len(x))
    noise = noise_field(*seed, x.shape) if ap.noise else None
    return np.asarray(augment_ops(x, flags, d, affine_transforms(d, *x.shape[1:3], ap), noise, ap))


def test_backend_neutral_augmentation_is_seeded_and_only_touches_flagged_images():
    x, flags = _batch(), np.array([True, False, True, False, True, True])
    ap = AugmentParams(noise=0.05)
    out = _neutral(x, flags, ap)
    assert out.shape == x.shape
    assert 0 <= out.min() <= out.max() <= 1
    assert np.array_equal(out[~flags], x[~flags])
    assert not np.allclose(out[flags], x[flags])
    assert np.array_equal(out, _neutral(x, flags, ap))
    assert not np.allclose(out[flags], _neutral(x, flags, ap, seed=(7, 1, 3))[flags])  # another batch, other draws


def test_backend_neutral_ops_do_what_they_say():
    x, flags = _batch(), np.ones(6, bool)
    none = dict(flip=False, rotation=0, shift=0, zoom=0, brightness=0, contrast=0, noise=0)
    flipped = _neutral(x, flags, AugmentParams(**{**none, "flip": True}))
    assert all(np.array_equal(f, i) or np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, x))
    assert not all(np.array_equal(f, i) for f, i in zip(flipped, x))
    base = x * 0.5 + 0.25
    shift = (_neutral(base, flags, AugmentParams(**{**none, "brightness": 0.2})) - base).reshape(6, -1)
    assert np.allclose(shift, shift[:, :1], atol=1e-6)
    assert np.abs(shift[:, 0]).max() <= 0.2
    turned = _neutral(x, flags, AugmentParams(**{**none, "rotation": 30}))
    assert not np.allclose(turned, x)
    assert np.allclose(turned.mean(), x.mean(), atol=0.05)
    # an identity warp samples every pixel where it is: the transform is the one Keras and TF expect
    still = _neutral(x, flags, AugmentParams(**{**none, "shift": 1e-9}))
    assert np.allclose(still, x, atol=1e-5)
    assert np.allclose(_neutral(x, flags, AugmentParams(**none)), x)
