"""pipeline.feed: the backend-neutral training batches (a PyDataset over uint8 shards, no tf.data).

Run here on the TensorFlow backend of the test process; the JAX backend runs it end to end in
tests/flows/test_jax_backend.py.
"""

import numpy as np

from pipeline.config import AugmentParams, TrainParams
from pipeline.feed import epoch_order, train_feed
from pipeline.shards import ArrayShards


def _split(n: int = 20) -> ArrayShards:
    rng = np.random.default_rng(0)
    return ArrayShards(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), np.arange(n) % 3)


def _plan(n: int = 20, extra: int = 6) -> tuple[np.ndarray, np.ndarray]:
    index = np.concatenate([np.arange(n), np.arange(extra)])  # the first six oversampled
    return index, np.concatenate([np.zeros(n, bool), np.ones(extra, bool)])


def _all(feed) -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(np.asarray(a) for a in feed[i]) for i in range(len(feed))]


def test_batches_cover_the_plan_each_epoch_in_a_seeded_order():
    training = TrainParams(epochs=3, batch_size=8, seed=5)
    split, plan = _split(), _plan()
    feed, steps = train_feed(split, plan, 3, training, AugmentParams(flip=False, rotation=0, shift=0, zoom=0,
                             brightness=0, contrast=0), 0)  # fmt: skip
    assert steps == 4
    assert len(feed) == 12
    batches = _all(feed)
    for epoch in range(3):
        x = np.concatenate([b[0] for b in batches[epoch * steps : (epoch + 1) * steps]])
        expected = split.images[plan[0][epoch_order(5, epoch, len(plan[0]))]].astype(np.float32) / 255
        assert np.array_equal(x, expected)  # no augmentation: the plan's images, in the epoch's order
        y = np.concatenate([b[1] for b in batches[epoch * steps : (epoch + 1) * steps]])
        assert np.array_equal(y.argmax(1), split.labels[plan[0][epoch_order(5, epoch, len(plan[0]))]])
    assert not np.array_equal(epoch_order(5, 0, 26), epoch_order(5, 1, 26))
    assert np.array_equal(epoch_order(5, 1, 26), epoch_order(5, 1, 26))


def test_a_resumed_feed_gives_the_batches_of_the_uninterrupted_one():
    training, augmentation = TrainParams(epochs=3, batch_size=8, seed=5), AugmentParams(noise=0.05)
    whole, steps = train_feed(_split(), _plan(), 3, training, augmentation, 0)
    resumed, _ = train_feed(_split(), _plan(), 3, training, augmentation, 2)
    assert len(resumed) == steps
    for i in range(steps):
        for a, b in zip(whole[2 * steps + i], resumed[i]):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    again, _ = train_feed(_split(), _plan(), 3, training, augmentation, 0)
    assert all(np.array_equal(np.asarray(a[0]), np.asarray(b[0])) for a, b in zip(_all(whole), _all(again)))


def test_only_flagged_images_are_augmented_and_memory_mapped_reads_match():
    training, augmentation = TrainParams(epochs=1, batch_size=26, seed=5), AugmentParams()
    split, plan = _split(), _plan()
    x, _ = train_feed(split, plan, 3, training, augmentation, 0)[0][0]
    order = epoch_order(5, 0, 26)
    plain = split.images[plan[0][order]].astype(np.float32) / 255
    flagged = plan[1][order]
    assert np.array_equal(np.asarray(x)[~flagged], plain[~flagged])
    assert not np.allclose(np.asarray(x)[flagged], plain[flagged])
    streamed, _ = train_feed(split, plan, 3, training.model_copy(update={"in_memory_mb": 0}), augmentation, 0)
    assert np.array_equal(np.asarray(streamed[0][0]), np.asarray(x))


def test_the_tf_data_pipeline_and_the_feed_give_the_same_batches():
    from pipeline.train import train_dataset

    training, augmentation = TrainParams(epochs=2, batch_size=8, seed=5), AugmentParams(noise=0.05)
    split, plan = _split(), _plan()
    feed, steps = train_feed(split, plan, 3, training, augmentation, 0)
    data, tf_steps = train_dataset(split, plan, 3, training, augmentation, 0)
    assert tf_steps == steps
    for (x, y), (fx, fy) in zip(data, _all(feed)):  # one implementation: TensorFlow and JAX runs alike
        assert np.array_equal(np.asarray(y), fy)
        assert np.allclose(np.asarray(x), fx, atol=1e-6)
