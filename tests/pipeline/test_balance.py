import numpy as np

from pipeline.balance import augment, class_weights, oversample


def test_class_weights_equalise_class_contributions():
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(y, 3)
    assert w == {0: 10 / 18, 1: 10 / 9, 2: 10 / 3}
    assert {c: w[c] * (y == c).sum() for c in w} == {0: 10 / 3, 1: 10 / 3, 2: 10 / 3}


def test_oversample_matches_majority_with_augmented_copies():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(10, 12, 12, 1)).astype(np.float32)
    y = np.array([0] * 7 + [1] * 2 + [2] * 1)
    xo, yo = oversample(x, y, np.random.default_rng(1), max_rotation=10)
    assert np.bincount(yo).tolist() == [7, 7, 7] and xo.shape == (21, 12, 12, 1)
    assert np.array_equal(xo[:10], x)  # originals kept as they were
    copies = xo[10:]
    assert not any(np.array_equal(c, x[8]) or np.array_equal(c, x[9]) for c in copies)
    again = oversample(x, y, np.random.default_rng(1), max_rotation=10)
    assert np.array_equal(again[0], xo)


def test_augment_keeps_shape_and_range():
    img = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8, 1)
    out = augment(img, np.random.default_rng(2), 15)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
