"""pipeline.shards: a split read image by image (positioned reads) or whole, from uint8 shards + meta.json."""

import json

import numpy as np
import pytest

from pipeline.shards import Shards, load_split, read_meta


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8) for n in (3, 2)]
    for i, part in enumerate(parts):
        np.save(tmp_path / f"x_train_{i:05d}.npy", part)
    np.save(tmp_path / "y_train.npy", np.array([0, 1, 2, 0, 1]))
    train = {"n": 5, "shards": ["x_train_00000.npy", "x_train_00001.npy"], "labels": "y_train.npy"}
    meta = {"size": 4, "channels": 1, "classes": ["a", "b", "c"], "splits": {"train": train}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return tmp_path, np.concatenate(parts)


def test_take_reads_any_images_across_shards(folder):
    path, images = folder
    shards = Shards(path, "train")
    assert len(shards) == 5
    assert shards.nbytes == 5 * 16
    assert np.array_equal(shards.take([4, 0, 3]), images[[4, 0, 3]])


def test_read_and_load_split_give_the_whole_split(folder):
    path, images = folder
    assert np.array_equal(Shards(path, "train").read(), images)
    x, y = load_split(path, "train")
    assert x.dtype == np.float32
    assert np.allclose(x, images / 255.0)
    assert y.tolist() == [0, 1, 2, 0, 1]
    assert read_meta(path)["classes"] == ["a", "b", "c"]


def test_a_shard_that_is_not_uint8_is_refused(folder):
    path, _ = folder
    np.save(path / "x_train_00001.npy", np.zeros((2, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match="not a C-ordered uint8 shard"):
        Shards(path, "train")
