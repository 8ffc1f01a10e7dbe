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


def test_jpeg_reduction_keeps_the_fitted_side_at_least_the_target():
    from pipeline.limits import Dimensions
    from pipeline.preprocess import jpeg_reduction

    wide = Dimensions(1024, 768)
    assert jpeg_reduction(wide, 224, "pad") == 4  # the longer side: 1024 / 4 = 256 >= 224, / 8 = 128 is not
    assert jpeg_reduction(wide, 224, "crop") == 2  # the shorter side: 768 / 2 = 384, / 4 = 192 < 224
    assert jpeg_reduction(wide, 224, "stretch") == 2
    assert jpeg_reduction(wide, 64, "pad") == 8
    assert jpeg_reduction(Dimensions(300, 300), 224, "pad") == 1
    assert jpeg_reduction(None, 64, "pad") == 1


@pytest.fixture(scope="module")
def large_jpegs(tmp_path_factory, tiny_data):
    """1024 px JPEGs (quality 90) made from the tiny chest images, gray and colour."""
    folder = tmp_path_factory.mktemp("large_jpegs")
    paths = []
    for i, path in enumerate(sorted((tiny_data / "images").rglob("*.png"))[:6]):
        img = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (1024, 768), interpolation=cv2.INTER_CUBIC)
        if i % 2:  # a tinted colour version
            img = cv2.merge([img, cv2.add(img, 20), cv2.subtract(img, 20)])
        paths.append(folder / f"{i}.jpg")
        cv2.imwrite(str(paths[-1]), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_large_jpegs_decode_reduced_within_a_grey_level_of_the_full_decode(large_jpegs, color):
    from pipeline.preprocess import prepare_image

    reduced, full = (PreprocessParams(size=224, color=color, jpeg_reduced=on) for on in (True, False))
    flag = cv2.IMREAD_REDUCED_GRAYSCALE_4 if color == "gray" else cv2.IMREAD_REDUCED_COLOR_4
    for path in large_jpegs:
        fast, slow = prepare_image(path, reduced), prepare_image(path, full)
        assert fast.shape == slow.shape == (224, 224, 1 if color == "gray" else 3)
        assert np.abs(fast.astype(int) - slow).mean() < 1.0  # mean absolute error, grey levels of 255
        libjpeg = cv2.imdecode(np.fromfile(path, np.uint8), flag)  # 1024 / 4 = 256 >= 224: a quarter
        libjpeg = libjpeg if color == "gray" else cv2.cvtColor(libjpeg, cv2.COLOR_BGR2RGB)
        assert np.array_equal(fast.reshape(fast.shape[:2] + (-1,)).squeeze(), fit_to_size(libjpeg, 224, "pad"))


def test_pngs_and_small_jpegs_decode_at_full_size(tiny_data, tmp_path):
    from pipeline.preprocess import prepare_image

    png = next((tiny_data / "images/normal").glob("*.png"))
    small = tmp_path / "small.jpg"
    cv2.imwrite(str(small), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    for path in (png, small):  # 64 px sources for a 48 px model: no reduction keeps 48 px
        on, off = (prepare_image(path, PreprocessParams(size=48, jpeg_reduced=flag)) for flag in (True, False))
        assert np.array_equal(on, off)
