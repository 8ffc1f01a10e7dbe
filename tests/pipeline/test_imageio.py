import cv2
import numpy as np
import pytest

from pipeline.errors import ImageError
from pipeline.imageio import pseudonym, read_image, to_gray
from tests.helpers import write_dicom


def test_png_8_and_16_bit_gray_rgb_rgba(tmp_path):
    gray16 = np.array([[0, 65535], [32768, 1000]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    img = read_image(tmp_path / "g16.png")
    assert img.bit_depth == 16
    assert img.channels == 1
    assert img.pixels[0, 1] == 1.0
    assert img.pixels[0, 0] == 0.0
    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[..., 2] = 255  # red in OpenCV's BGR(A) order
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    rgba = read_image(tmp_path / "rgba.png")
    assert rgba.channels == 4
    assert rgba.pixels.shape == (3, 3, 3)
    assert rgba.pixels[0, 0].tolist() == [1, 0, 0]
    assert to_gray(rgba.pixels)[0, 0] == pytest.approx(0.299, abs=1e-3)


def test_jpeg_colour(tmp_path):
    cv2.imwrite(str(tmp_path / "c.jpg"), np.full((8, 8, 3), (255, 0, 0), np.uint8))  # blue
    img = read_image(tmp_path / "c.jpg")
    assert img.channels == 3
    assert img.pixels[4, 4, 2] > 0.9
    assert img.pixels[4, 4, 0] < 0.1


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"hello", "not a decodable image")])
def test_bad_raster_files(tmp_path, content, reason):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        read_image(tmp_path / "x.png")
    assert info.value.file.endswith("x.png")


def test_dicom_rescale_window_monochrome1_and_pseudonym(tmp_path):
    ramp = np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000
    plain = read_image(write_dicom(tmp_path / "a.dcm", ramp, slope=2.0, intercept=-100), salt=b"s")
    assert plain.pixels.min() == 0
    assert plain.pixels.max() == 1
    assert plain.pixels[0, 1] > plain.pixels[0, 0]
    assert plain.bit_depth == 16
    assert plain.patient_key == pseudonym("MRN-99417-XQ", b"s") != "MRN-99417-XQ"
    inverted = read_image(write_dicom(tmp_path / "b.dcm", ramp, photometric="MONOCHROME1"))
    assert np.allclose(inverted.pixels, 1 - plain.pixels)
    windowed = read_image(write_dicom(tmp_path / "c.dcm", ramp, window=(4000, 2000)))
    assert windowed.pixels[0, 0] == 0
    assert windowed.pixels[3, 3] == 1  # clipped outside the window
    assert 0 < windowed.pixels[1, 0] < 1


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_dicom_reads_as_rgb(tmp_path, photometric):
    from pipeline.preprocess import decode_uint8

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 60, 20  # a stained or Doppler colour
    image = read_image(write_dicom(tmp_path / "c.dcm", rgb, photometric=photometric), salt=b"s")
    assert image.channels == 3
    assert image.pixels.shape == (6, 8, 3)
    assert image.patient_key.startswith("P-")
    assert np.abs(image.pixels * 255 - rgb).max() <= 2  # YBR_FULL round trip: within 2 levels
    assert np.abs(decode_uint8(tmp_path / "c.dcm", "rgb").astype(int) - rgb).max() <= 2
    assert decode_uint8(tmp_path / "c.dcm", "gray").shape == (6, 8)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless", "JPEGLSLossless"])
def test_compressed_dicom_decodes_to_the_same_pixels(tmp_path, syntax):
    import pydicom
    import pydicom.uid

    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16  # JPEG 2000's levels need >= 64 px
    plain = write_dicom(tmp_path / "plain.dcm", ramp)
    ds = pydicom.dcmread(plain)
    ds.compress(getattr(pydicom.uid, syntax))  # as a scanner or PACS stores it
    ds.save_as(tmp_path / "packed.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "packed.dcm").file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(read_image(tmp_path / "packed.dcm").pixels, read_image(plain).pixels)


def test_jpeg_baseline_dicom_decodes(tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    path = write_dicom(tmp_path / "j.dcm", gray)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    pixels = read_image(path).pixels
    expected = gray.astype(np.float64) * 255 / gray.max()  # medpipe scales DICOM gray to its own range
    assert pixels.shape == (16, 16)
    assert np.abs(pixels * 255 - expected).max() < 12


def test_dicom_errors(tmp_path):
    frame = np.zeros((4, 4), np.uint16)
    with pytest.raises(ImageError, match="no pixel data"):
        read_image(write_dicom(tmp_path / "n.dcm", frame, with_pixels=False))
    with pytest.raises(ImageError, match="multi-frame DICOM \\(3 frames\\)"):
        read_image(write_dicom(tmp_path / "m.dcm", frame, frames=3))
    (tmp_path / "t.dcm").write_text("not dicom")
    with pytest.raises(ImageError, match="not a readable DICOM"):
        read_image(tmp_path / "t.dcm")


def test_pseudonyms_depend_on_salt():
    assert pseudonym("x", b"a") == pseudonym("x", b"a") != pseudonym("x", b"b")
