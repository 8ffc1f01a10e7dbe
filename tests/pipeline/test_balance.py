import numpy as np
import pytest

from pipeline.augment import augment_batch
from pipeline.balance import class_weights, make_plan, oversample_plan
from pipeline.config import AugmentParams, BalanceParams


def test_class_weights_equalise_class_contributions():
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(y, 3)
    assert w == {0: 10 / 18, 1: 10 / 9, 2: 10 / 3}
    assert {c: w[c] * (y == c).sum() for c in w} == {0: 10 / 3, 1: 10 / 3, 2: 10 / 3}


def test_oversample_plan_reaches_the_target_ratio_with_flagged_copies():
    y = np.array([0] * 8 + [1] * 2 + [2] * 1)
    index, copies = oversample_plan(y, 1.0, np.random.default_rng(1))
    assert np.bincount(y[index]).tolist() == [8, 8, 8]
    assert np.array_equal(index[:11], np.arange(11)) and not copies[:11].any() and copies[11:].all()
    assert set(index[11:]) <= {8, 9, 10}  # copies come from the smaller classes only
    half, _ = oversample_plan(y, 0.5, np.random.default_rng(1))
    assert np.bincount(y[half]).tolist() == [8, 4, 4]
    assert np.array_equal(oversample_plan(y, 1.0, np.random.default_rng(1))[0], index)  # seeded


@pytest.mark.parametrize("strategy, total, weighted", [("none", 11, False), ("class_weight", 11, True),
                                                       ("oversample", 20, False),
                                                       ("oversample+class_weight", 20, True)])
def test_strategies(strategy, total, weighted):
    y = np.array([0] * 8 + [1] * 2 + [2] * 1)
    index, augment, weights = make_plan(y, BalanceParams(strategy=strategy, target_ratio=0.75), 3)
    assert len(index) == total and (weights is not None) == weighted
    if weighted:  # weights balance what training actually sees
        counts = np.bincount(y[index])
        assert np.allclose([weights[c] * counts[c] for c in range(3)], len(index) / 3)
    assert augment.sum() == total - 11
    assert make_plan(y, BalanceParams(strategy=strategy, augment_originals=True), 3)[1].all()


def _batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(size=(6, 16, 16, 1)).astype(np.float32)


def test_augmentation_is_seeded_and_only_touches_flagged_images():
    x, flags = _batch(), np.array([True, False, True, False, True, True])
    ap = AugmentParams(noise=0.05)
    out = np.asarray(augment_batch(x, flags, np.array([3, 4]), ap))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert np.array_equal(out[~flags], x[~flags]) and not np.allclose(out[flags], x[flags])
    assert np.array_equal(out, np.asarray(augment_batch(x, flags, np.array([3, 4]), ap)))
    assert not np.allclose(out[flags], np.asarray(augment_batch(x, flags, np.array([3, 5]), ap))[flags])


def test_each_op_does_what_it_says():
    x, flags = _batch(), np.ones(6, bool)
    none = dict(flip=False, rotation=0, shift=0, zoom=0, brightness=0, contrast=0, noise=0)
    flipped = np.asarray(augment_batch(x, flags, np.array([1, 2]), AugmentParams(**{**none, "flip": True})))
    assert all(np.array_equal(f, i) or np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, x))
    assert not all(np.array_equal(f, i) for f, i in zip(flipped, x))
    bright = np.asarray(augment_batch(x * 0.5 + 0.25, flags, np.array([1, 2]),
                                      AugmentParams(**{**none, "brightness": 0.2})))
    shift = (bright - (x * 0.5 + 0.25)).reshape(6, -1)
    assert np.allclose(shift, shift[:, :1], atol=1e-6) and np.abs(shift[:, 0]).max() <= 0.2
    turned = np.asarray(augment_batch(x, flags, np.array([1, 2]), AugmentParams(**{**none, "rotation": 30})))
    assert not np.allclose(turned, x) and np.allclose(turned.mean(), x.mean(), atol=0.05)
    same = np.asarray(augment_batch(x, flags, np.array([1, 2]), AugmentParams(**none)))
    assert np.allclose(same, x)
