import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import ClaheParams, Params, PreprocessParams, Workspace
from pipeline.errors import DataError
from pipeline.preprocess import decode_uint8, enhance, fit_to_size, load_image, run_step
from pipeline.shards import Shards, load_split, read_meta
from pipeline.validate import ValidationReport


def test_load_image_resizes_and_scales(tiny_data):
    path = next((tiny_data / "images/normal").glob("*.png"))
    img = load_image(path, PreprocessParams(size=20))
    assert img.shape == (20, 20, 1)
    assert img.dtype == np.float32
    assert 0.0 <= img.min() < img.max() <= 1.0
    rgb = load_image(path, PreprocessParams(size=20, color="rgb"))
    assert rgb.shape == (20, 20, 3)
    assert np.allclose(rgb[..., 0], rgb[..., 2])


def test_undecodable_image_names_the_file(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("nope")
    with pytest.raises(DataError, match="x.png: not a decodable image"):
        load_image(bad, PreprocessParams(size=8))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png: empty file"):
        load_image(tmp_path / "empty.png", PreprocessParams(size=8))


def test_sixteen_bit_png_is_scaled_not_truncated(tmp_path):
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((10, 10), 65535, np.uint16))
    assert decode_uint8(tmp_path / "deep.png", "gray").max() == 255


def test_fit_pads_crops_or_stretches():
    img = np.full((20, 40), 200, np.uint8)  # wide: 20 rows, 40 columns
    padded = fit_to_size(img, 20, "pad")
    assert padded.shape == (20, 20)
    assert padded[0].max() == 0
    assert padded[10].min() == 200  # black bars top/bottom
    img[:, :10] = 0  # a dark band at the left edge is cut away by the centre crop
    assert fit_to_size(img, 20, "crop").min() == 200
    assert fit_to_size(img, 20, "stretch")[:, 0].max() == 0


def test_clahe_lifts_contrast_and_denoising_smooths():
    rng = np.random.default_rng(0)
    flat = (120 + 10 * np.sin(np.linspace(0, 12, 64))[None, :] * np.ones((64, 1))).astype(np.uint8)
    clahe = enhance(flat, PreprocessParams(clahe={"enabled": True, "clip_limit": 4.0}))
    assert clahe.std() > 1.5 * flat.std()
    noisy = np.clip(128 + rng.normal(0, 10, (64, 64)), 0, 255).astype(np.uint8)
    for method in ("median", "bilateral", "nlmeans"):
        assert enhance(noisy, PreprocessParams(denoise=method)).std() < 0.8 * noisy.std(), method


def _validated(tmp_path, tiny_data, **preprocess) -> tuple[Params, Workspace, ValidationReport]:
    from pipeline import validate

    params = Params.model_validate({"preprocess": {"size": 16, **preprocess}})
    ws = Workspace(base=tmp_path, data_root=tiny_data, out=tmp_path / "out")
    report = validate.run_step(params, ws)
    assert report.success  # validation decides the split
    return params, ws, report


def test_run_step_writes_uint8_shards_and_train_statistics(tmp_path, tiny_data):
    params, ws, report = _validated(tmp_path, tiny_data, shard_size=16)
    result = run_step(params, ws, report)
    assert not result.cached
    assert sum(result.split_sizes.values()) == len(pd.read_csv(tiny_data / "manifest.csv"))
    train = Shards(result.folder, "train")
    assert len(train.files) == -(-len(train) // 16) > 1
    assert train.take([0]).dtype == np.uint8
    x, y = load_split(result.folder, "train")
    assert x.shape[1:] == (16, 16, 1)
    assert x.dtype == np.float32
    assert len(y) == result.split_sizes["train"]
    assert result.mean == pytest.approx(x.mean(), abs=1e-6)
    assert result.std == pytest.approx(x.std(), abs=1e-5)
    index = np.array([len(train) - 1, 0, 17, 3])
    assert np.array_equal(train.take(index), train.read()[index])  # random access across shards
    assert result.classes == ["normal", "nodule", "effusion"]
    assert read_meta(result.folder)["classes"] == result.classes


def test_unchanged_inputs_come_from_the_cache(tmp_path, tiny_data):
    params, ws, report = _validated(tmp_path, tiny_data)
    first = run_step(params, ws, report)
    stamp = (first.folder / "meta.json").stat().st_mtime_ns
    again = run_step(params, ws, report)
    assert again.cached
    assert again.key == first.key
    assert (first.folder / "meta.json").stat().st_mtime_ns == stamp
    changed = params.model_copy(
        update={"preprocess": params.preprocess.model_copy(update={"clahe": ClaheParams(enabled=True)})}
    )
    redone = run_step(changed, ws, report)
    assert not redone.cached
    assert redone.key != first.key
    (first.folder / "y_val.npy").unlink()  # a damaged cache is rebuilt, not trusted
    assert not run_step(changed, ws, report).cached
