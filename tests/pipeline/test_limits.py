import base64
import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import PIXEL_FIELDS, Params, PreprocessParams
from pipeline.errors import ImageError, MedpipeError
from pipeline.imageio import read_image
from pipeline.limits import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_PIXELS, MB, Dimensions, check_image, header_dimensions
from pipeline.preprocess import decode_uint8
from pipeline.scan import scan, scan_file
from pipeline.serving import cells, model_input
from tests.helpers import bomb_dicom, bomb_png, write_dicom

PP = PreprocessParams(size=32)
BOMB_REASON = "image of 20000x20000 = 400.0 Mpx exceeds the cap of 50.0 Mpx (preprocess.max_pixels)"


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {"png": bomb_png(folder / "bomb.png", 20000), "dicom": bomb_dicom(folder / "bomb.dcm", 16384, 16384)}


def _dims(path: Path) -> Dimensions | None:
    with path.open("rb") as fp:
        return header_dimensions(path, fp)


def test_header_dimensions_of_real_files(tmp_path):
    rng = np.random.default_rng(0)
    gray, rgb = rng.integers(0, 256, (30, 50), np.uint8), rng.integers(0, 256, (30, 50, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "c.jpg"), rgb)
    cv2.imwrite(str(tmp_path / "p.jpg"), gray, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert _dims(tmp_path / "g.png") == Dimensions(50, 30)
    assert _dims(tmp_path / "c16.png") == Dimensions(50, 30)
    assert _dims(tmp_path / "c.jpg") == Dimensions(50, 30, 1, 3)
    assert _dims(tmp_path / "p.jpg") == Dimensions(50, 30, 1, 1)  # progressive: SOF2
    # fill bytes before a marker and an APP segment before the frame header are skipped
    jpeg = (tmp_path / "c.jpg").read_bytes()
    padded = jpeg[:2] + b"\xff\xe5\x00\x06extra" + b"\xff\xff\xff" + jpeg[2:]
    assert header_dimensions("x.jpg", io.BytesIO(padded)) == Dimensions(50, 30, 1, 3)
    assert cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_UNCHANGED).shape == (30, 50, 3)
    write_dicom(tmp_path / "one.dcm", np.zeros((40, 24), np.uint16))
    write_dicom(tmp_path / "multi.dcm", np.zeros((8, 6), np.uint8), frames=3)
    assert _dims(tmp_path / "one.dcm") == Dimensions(24, 40)
    assert _dims(tmp_path / "multi.dcm") == Dimensions(6, 8, 3, 1)
    small = bomb_dicom(tmp_path / "deflated.dcm", 12, 20)
    assert _dims(small) == Dimensions(20, 12)
    assert read_image(small).pixels.shape == (12, 20)  # a normal deflated DICOM still reads
    (tmp_path / "x.bmp").write_bytes(cv2.imencode(".bmp", gray)[1].tobytes())
    assert _dims(tmp_path / "x.bmp") is None  # unknown formats are left to the decoder
    assert header_dimensions("t.png", io.BytesIO(b"\x89PNG\r\n\x1a\n")) is None  # truncated header


def test_caps_are_params_outside_the_cache_key():
    pp = Params().preprocess
    assert (pp.max_pixels, pp.max_file_mb) == (DEFAULT_MAX_PIXELS, DEFAULT_MAX_FILE_MB) == (50_000_000, 512)
    assert "max_pixels" not in PIXEL_FIELDS
    assert "max_file_mb" not in PIXEL_FIELDS
    old = {k: v for k, v in pp.model_dump(mode="json").items() if k not in ("max_pixels", "max_file_mb")}
    assert PreprocessParams.model_validate(old) == pp  # an older serving.json gets the defaults


def test_a_png_bomb_is_refused_from_its_header_everywhere(bombs, tmp_path):
    png = bombs["png"]
    assert png.stat().st_size < 500_000
    with pytest.raises(ImageError) as err:
        check_image("bomb.png", png)
    assert str(err.value) == f"bomb.png: {BOMB_REASON}"
    assert "\n" not in str(err.value)
    row = scan_file(png.parent, "bomb.png", b"")
    assert not row.readable
    assert row.error == BOMB_REASON
    assert row.size == png.stat().st_size
    with pytest.raises(ImageError, match="exceeds the cap of 50.0 Mpx"):
        decode_uint8(png, "gray")
    with pytest.raises(ImageError, match="exceeds the cap"):
        read_image(png)
    data = png.read_bytes()
    for cell in (data, base64.b64encode(data).decode(), base64.b64encode(data)):
        with pytest.raises(ImageError, match=r"^image\[3\]: image of 20000x20000 = 400.0 Mpx exceeds"):
            model_input(cell, 3, PP)


def test_the_caps_come_from_the_params(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 50), 128, np.uint8))
    assert scan_file(tmp_path, "a.png", b"").readable
    row = scan_file(tmp_path, "a.png", b"", max_pixels=1000)
    assert row.error == "image of 50x40 = 2,000 px exceeds the cap of 1,000 px (preprocess.max_pixels)"
    table = scan(tmp_path, ["a.png"], cache=tmp_path / "cache" / "scan.csv", workers=1, project=tmp_path)
    assert table["readable"].all()
    table = scan(
        tmp_path, ["a.png"], cache=tmp_path / "cache" / "scan.csv", workers=1, project=tmp_path, max_pixels=1000
    )
    assert not table["readable"].any()  # a changed cap redoes the cached scan
    with pytest.raises(ImageError, match=r"image\[0\]: image of 50x40"):
        model_input((tmp_path / "a.png").read_bytes(), 0, PreprocessParams(size=32, max_pixels=1000))
    with pytest.raises(MedpipeError, match=r"image\[1\]: pixel array of shape \(40, 50\)"):
        model_input(np.zeros((40, 50), np.uint8), 1, PreprocessParams(size=32, max_pixels=1000))


def test_deflated_dicom_bombs_are_refused(bombs, tmp_path):
    dicom = bombs["dicom"]
    assert dicom.stat().st_size < 600_000
    reason = "image of 16384x16384 = 268.4 Mpx exceeds the cap of 50.0 Mpx (preprocess.max_pixels)"
    assert scan_file(dicom.parent, "bomb.dcm", b"").error == reason
    with pytest.raises(ImageError, match="16384x16384"):
        model_input(dicom.read_bytes(), 0, PP)
    # a header within the cap, but pixel data that inflates far beyond it
    liar = bomb_dicom(tmp_path / "liar.dcm", 8, 8, pixel_bytes=20 * MB)
    with pytest.raises(ImageError, match=r"liar.dcm: deflated DICOM inflates beyond 16 MB, more than an image"):
        check_image(liar, liar, max_pixels=1000)
    assert "inflates beyond" in scan_file(tmp_path, "liar.dcm", b"", max_pixels=1000).error


def test_file_size_cap_is_checked_before_reading(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 50), 128, np.uint8))
    size = (tmp_path / "a.png").stat().st_size
    row = scan_file(tmp_path, "a.png", b"", max_bytes=100)
    assert not row.readable
    assert row.sha256 == ""
    assert row.size == size
    assert row.error == f"file of {size / MB:.1f} MB exceeds the cap of 0 MB (preprocess.max_file_mb)"
    with pytest.raises(ImageError, match="preprocess.max_file_mb"):
        decode_uint8(tmp_path / "a.png", "gray", max_bytes=100)
    with pytest.raises(ImageError, match=r"image\[2\]: file of"):
        model_input(
            (tmp_path / "a.png").read_bytes(),
            2,
            PreprocessParams(size=32, max_file_mb=1).model_copy(update={"max_file_mb": 0}),
        )


def test_normal_images_and_base64_bytes_cells(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (64, 48), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    raw = (tmp_path / "a.png").read_bytes()
    assert np.array_equal(decode_uint8(tmp_path / "a.png", "gray"), img)
    expected = model_input(raw, 0, PP)
    assert np.array_equal(model_input(base64.b64encode(raw), 0, PP), expected)  # the `instances` form
    assert np.array_equal(model_input(base64.encodebytes(raw), 0, PP), expected)  # with line breaks
    assert cells([{"image": raw}, {"image": raw}]) == [raw, raw]
    with pytest.raises(ImageError, match=r"^image\[4\]: not a decodable image"):
        model_input(b"not an image", 4, PP)
    with pytest.raises(ImageError, match=r"^image\[5\]: not a decodable image"):
        model_input(base64.b64encode(b"not an image either"), 5, PP)
