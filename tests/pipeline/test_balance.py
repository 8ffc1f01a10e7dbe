import numpy as np
import pytest

from pipeline.balance import class_weights, make_plan, oversample_plan
from pipeline.config import BalanceParams


def test_class_weights_equalise_class_contributions():
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(y, 3)
    assert w == {0: 10 / 18, 1: 10 / 9, 2: 10 / 3}
    assert {c: w[c] * (y == c).sum() for c in w} == {0: 10 / 3, 1: 10 / 3, 2: 10 / 3}


def test_oversample_plan_reaches_the_target_ratio_with_flagged_copies():
    y = np.array([0] * 8 + [1] * 2 + [2] * 1)
    index, copies = oversample_plan(y, 1.0, np.random.default_rng(1))
    assert np.bincount(y[index]).tolist() == [8, 8, 8]
    assert np.array_equal(index[:11], np.arange(11))
    assert not copies[:11].any()
    assert copies[11:].all()
    assert set(index[11:]) <= {8, 9, 10}  # copies come from the smaller classes only
    half, _ = oversample_plan(y, 0.5, np.random.default_rng(1))
    assert np.bincount(y[half]).tolist() == [8, 4, 4]
    assert np.array_equal(oversample_plan(y, 1.0, np.random.default_rng(1))[0], index)  # seeded


@pytest.mark.parametrize(
    "strategy, total, weighted",
    [("none", 11, False), ("class_weight", 11, True), ("oversample", 20, False), ("oversample+class_weight", 20, True)],
)
def test_strategies(strategy, total, weighted):
    y = np.array([0] * 8 + [1] * 2 + [2] * 1)
    index, augment, weights = make_plan(y, BalanceParams(strategy=strategy, target_ratio=0.75), 3)
    assert len(index) == total
    assert (weights is not None) == weighted
    if weighted:  # weights balance what training actually sees
        counts = np.bincount(y[index])
        assert np.allclose([weights[c] * counts[c] for c in range(3)], len(index) / 3)
    assert augment.sum() == total - 11
    assert make_plan(y, BalanceParams(strategy=strategy, augment_originals=True), 3)[1].all()
