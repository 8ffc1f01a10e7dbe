"""Reading images as they come: PNG/JPEG (8/16-bit, gray/RGB/RGBA) and DICOM.

Every reader returns pixels as float32 in [0, 1] plus what it learned about the file; a file
that cannot be used raises ImageError naming the file and the reason.
"""

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import ImageError
from pipeline.limits import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_PIXELS, MB, check_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
CHROMA_MIN = 4 / 255  # mean (max - min channel) above which an image carries colour, not gray stored as RGB


@dataclass(frozen=True)
class Image:
    """Pixels scaled to [0, 1] (H, W) or (H, W, 3 RGB), the source bit depth and, for DICOM, the
    pseudonymous patient key (never the identifier itself)."""

    pixels: np.ndarray
    bit_depth: int
    channels: int
    patient_key: str | None = None


def pseudonym(identifier: str, salt: bytes) -> str:
    """Salted, keyed hash of a patient identifier: stable per data set, not reversible without the salt.

    Args:
        identifier: The patient identifier (e.g. DICOM PatientID).
        salt: The data set's pseudonymisation salt (HMAC key).

    Returns:
        `P-` and the first 16 hex digits of the HMAC-SHA256.
    """
    return "P-" + hmac.new(salt, identifier.encode(), hashlib.sha256).hexdigest()[:16]


def _scale(raw: np.ndarray) -> np.ndarray:
    bits = 16 if raw.dtype == np.uint16 else 8
    return raw.astype(np.float32) / float(2**bits - 1)


def bounded_bytes(
    path: Path,
    data: bytes | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_FILE_MB * MB,
) -> bytes:
    """A file's content (`data` when already in hand), refused when over a cap before it decodes.

    Args:
        path: The file (names it in errors when `data` is given).
        data: Its content, if already read.
        max_pixels: Cap on the pixels its header declares (pipeline.limits); None: not checked here.
        max_bytes: Cap on its size, checked by stat before reading; None: not checked here.

    Returns:
        The content.

    Raises:
        ImageError: a file over a cap (the reason names the cap's parameter).
    """
    if data is None:
        check_image(path, path, None, max_bytes)  # stat before reading
        data = path.read_bytes()
    check_image(path, data, max_pixels, max_bytes)
    return data


def imdecode(path: Path, buf: np.ndarray, flags: int) -> np.ndarray | None:
    """cv2.imdecode with OpenCV's own refusals (e.g. over OPENCV_IO_MAX_IMAGE_PIXELS) as one-line ImageErrors.

    Args:
        path: The file (names it in errors).
        buf: Its encoded bytes as a uint8 array.
        flags: cv2.IMREAD_* flags.

    Returns:
        The decoded array, or None when OpenCV cannot decode it without raising.

    Raises:
        ImageError: OpenCV refused the image (over its decoder limit, or otherwise).
    """
    try:
        return cv2.imdecode(buf, flags)
    except cv2.error as err:
        limit = "CV_IO_MAX_IMAGE" in str(err)
        raise ImageError(
            path,
            "image exceeds OpenCV's decoder limit (OPENCV_IO_MAX_IMAGE_PIXELS)"
            if limit
            else "not a decodable image (OpenCV refused it)",
        ) from None


def read_raster(
    path: Path,
    data: bytes | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_FILE_MB * MB,
) -> Image:
    """PNG or JPEG via OpenCV, any bit depth; colour comes back RGB, alpha dropped.

    `data`, when given, is the file's content already read (the scan hashes it too). A file over
    `max_bytes`, or whose header declares more than `max_pixels`, is refused before decoding (None:
    the caller checked).

    Args:
        path: The file.
        data: Its content, if already read.
        max_pixels: Cap on the pixels its header declares; None: not checked here.
        max_bytes: Cap on its size in bytes; None: not checked here.

    Returns:
        The pixels in [0, 1] with bit depth (8 or 16) and the file's channel count.

    Raises:
        ImageError: the file is over a cap, empty, not decodable, or of an unsupported pixel type.
    """
    data = bounded_bytes(path, data, max_pixels, max_bytes)
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    raw = imdecode(path, np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        raise ImageError(path, "not a decodable image (corrupt, truncated or not an image file)")
    if raw.dtype not in (np.uint8, np.uint16):
        raise ImageError(path, f"unsupported pixel type {raw.dtype}")
    bits = 16 if raw.dtype == np.uint16 else 8
    if raw.ndim == 2:
        return Image(_scale(raw), bits, 1)
    channels = raw.shape[2]
    code = {1: None, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}[channels]
    rgb = raw[:, :, 0] if code is None else cv2.cvtColor(raw, code)
    return Image(_scale(rgb), bits, channels)


COLOR_PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")  # pydicom gives these as RGB


def _dicom_pixels(ds, path: Path) -> np.ndarray:
    """Grayscale: modality LUT (rescale slope/intercept), VOI windowing when present, MONOCHROME1 inverted.
    Colour (RGB, YBR: ultrasound, dermatology, endoscopy): RGB scaled by BitsStored."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in ds:
        raise ImageError(path, "DICOM has no pixel data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(path, f"multi-frame DICOM ({frames} frames) is not supported; export single frames")
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken pixel data
        raise ImageError(path, f"DICOM pixel data cannot be decoded ({err.__class__.__name__})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) == 3 and photometric in COLOR_PHOTOMETRIC and arr.ndim == 3:
        top = float(2 ** int(getattr(ds, "BitsStored", 8) or 8) - 1)
        return np.clip(arr.astype(np.float32) / top, 0.0, 1.0)
    arr = apply_modality_lut(arr, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        arr = apply_voi_lut(arr, ds).astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)


def read_dicom(
    path: Path,
    salt: bytes,
    data: bytes | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_FILE_MB * MB,
) -> Image:
    """A single-frame grayscale or colour (RGB/YBR) DICOM, with its PatientID turned into a pseudonymous key
    (caps as read_raster; a deflated one must not inflate beyond what `max_pixels` need).

    Args:
        path: The file.
        salt: The pseudonymisation salt for the patient key.
        data: Its content, if already read.
        max_pixels: Cap on the pixels its header declares; None: not checked here.
        max_bytes: Cap on its size in bytes; None: not checked here.

    Returns:
        The pixels in [0, 1] (gray: modality LUT, VOI window, MONOCHROME1 inverted; colour: RGB), BitsStored,
        the channel count (1 or 3) and the pseudonymous patient key (None without a PatientID).

    Raises:
        ImageError: the file is over a cap, empty, not a readable DICOM, without (decodable) pixel data,
            multi-frame, or neither a grayscale nor an RGB/YBR image.
    """
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    data = bounded_bytes(path, data, max_pixels, max_bytes)
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError) as err:
        raise ImageError(path, f"not a readable DICOM file ({err.__class__.__name__})") from None
    pixels = _dicom_pixels(ds, path)
    if pixels.ndim != 2 and not (pixels.ndim == 3 and pixels.shape[2] == 3):
        raise ImageError(path, f"DICOM pixel array of shape {pixels.shape} is neither a grayscale nor an RGB image")
    patient = str(getattr(ds, "PatientID", "") or "")
    channels = 1 if pixels.ndim == 2 else 3
    return Image(pixels, int(getattr(ds, "BitsStored", 16)), channels, pseudonym(patient, salt) if patient else None)


def read_image(
    path: Path,
    salt: bytes = b"",
    data: bytes | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_FILE_MB * MB,
) -> Image:
    """Read any supported image file by its suffix (from `data` when the bytes are already in hand), refused
    before decoding when over a cap (see read_raster).

    Args:
        path: The file; `.dcm` is read as DICOM, anything else as PNG/JPEG.
        salt: The pseudonymisation salt (DICOM patient keys).
        data: Its content, if already read.
        max_pixels: Cap on the pixels its header declares; None: not checked here.
        max_bytes: Cap on its size in bytes; None: not checked here.

    Returns:
        The image (see read_raster and read_dicom).

    Raises:
        ImageError: the file is missing (when `data` is not given) or cannot be used.
    """
    if data is None and not path.is_file():
        raise ImageError(path, "file not found")
    if path.suffix.lower() == ".dcm":
        return read_dicom(path, salt, data, max_pixels, max_bytes)
    return read_raster(path, data, max_pixels, max_bytes)


def chroma(pixels: np.ndarray) -> float:
    """How much colour an image carries: the mean over pixels of its largest minus its smallest channel.

    Args:
        pixels: (h, w) or (h, w, c) in [0, 1].

    Returns:
        0 for one channel; near 0 for gray stored as RGB; larger for coloured images.
    """
    if pixels.ndim < 3 or pixels.shape[2] < 3:
        return 0.0
    rgb = pixels[:, :, :3]
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean())


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] to luminance (ITU-R BT.601, as OpenCV); grayscale passes through.

    Args:
        pixels: (H, W) or (H, W, 3) RGB float32.

    Returns:
        (H, W) luminance (the input itself when already 2-D).
    """
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
