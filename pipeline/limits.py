"""Bounded inputs: an image's dimensions read from its header, checked against caps before it decodes.

A few hundred kilobytes of PNG, JPEG or deflated DICOM can declare gigapixels; decoding them first
and measuring afterwards costs gigabytes. Here PNG (IHDR), JPEG (the SOFn marker) and DICOM
(Rows x Columns x NumberOfFrames x SamplesPerPixel, read with the pixel data left on disk) are
measured from their headers, and a file larger than the byte cap is refused before it is read. A
deflated DICOM is inflated incrementally, each step's output bounded, and refused when it would
inflate beyond what an image within the cap can need. Other formats are left to the decoder, behind
OpenCV's own pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS, see pipeline._env).
"""

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Defaults of preprocess.max_pixels / preprocess.max_file_mb (pipeline.config), for callers without params.
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_FILE_MB = 512
MB = 2**20

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC = b"DICM"  # at offset 128, after the preamble
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
# Start-of-frame markers carry the geometry: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI: no length field
_CHUNK = 64 * 1024
_DEFLATE_HEADER = 1 * MB  # inflated bytes kept to read a deflated DICOM's header from
_HEADER_ALLOWANCE = 16 * MB  # non-pixel content a deflated DICOM may add to its pixels
_BYTES_PER_SAMPLE = 8  # the widest DICOM sample (64-bit float pixel data)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass(frozen=True)
class Dimensions:
    """What a header declares: width x height, frames and samples (channels) per pixel."""

    width: int
    height: int
    frames: int = 1
    samples: int = 1

    @property
    def pixels(self) -> int:
        """Samples to decode: width x height x frames x samples per pixel."""
        return self.width * self.height * self.frames * self.samples

    def __str__(self) -> str:
        extra = (f" x {self.frames} frames" if self.frames > 1 else "") + (
            f" x {self.samples} samples" if self.samples > 1 else ""
        )
        return f"{self.width}x{self.height}{extra}"


def pixel_count(n: int) -> str:
    """A pixel count as people read it: `400.0 Mpx`, or `2,000 px` below a tenth of a megapixel.

    Args:
        n: The number of pixels (or samples).

    Returns:
        The count with its unit, for messages.
    """
    return f"{n / 1e6:,.1f} Mpx" if n >= 100_000 else f"{n:,} px"


def _error(name: str | Path, reason: str) -> Exception:
    from pipeline.errors import ImageError

    return ImageError(name, reason)


def kind(head: bytes) -> str | None:
    """The format a file's first bytes announce: "png", "jpeg", "dicom", or None (unknown).

    Args:
        head: The file's first bytes (132 or more to recognise DICOM).

    Returns:
        The format's name, or None when no PNG, JPEG or DICOM magic is there.
    """
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[128:132] == DICOM_MAGIC:
        return "dicom"
    return None


def png_dimensions(fp: BinaryIO) -> Dimensions | None:
    """A PNG's width and height from its IHDR chunk (the first one, right after the signature).

    Args:
        fp: The file, positioned at its start.

    Returns:
        The dimensions, or None when the IHDR chunk is missing or truncated.
    """
    head = fp.read(24)
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return Dimensions(width, height)


def jpeg_dimensions(fp: BinaryIO) -> Dimensions | None:
    """A JPEG's width, height and components from its first start-of-frame marker (SOF0..SOF15).

    Segments before it (APPn, DQT, DHT, ...) are skipped by their length, fill bytes (0xFF runs)
    between markers are allowed, so nothing but marker headers is read.

    Args:
        fp: The file, positioned at its start.

    Returns:
        The dimensions, or None when no frame header comes before the scan data or the end.
    """
    if fp.read(2) != b"\xff\xd8":
        return None
    while True:
        byte = fp.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            continue  # not at a marker (stray data): look on for the next one
        marker = fp.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fp.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in _STANDALONE or code == 0x00:
            continue
        if code in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
            return None
        length = fp.read(2)
        if len(length) < 2:
            return None
        size = struct.unpack(">H", length)[0]
        if code in _SOF:
            frame = fp.read(6)
            if len(frame) < 6:
                return None
            _, height, width, components = struct.unpack(">BHHB", frame)
            return Dimensions(width, height, 1, max(components, 1))
        if size < 2:
            return None
        fp.seek(size - 2, io.SEEK_CUR)


def _meta_transfer_syntax(fp: BinaryIO) -> tuple[str, int] | None:
    """The transfer syntax UID in a DICOM file's meta group (explicit VR little endian, after the
    preamble) and the offset where the data set proper starts."""
    fp.seek(132)
    syntax = ""
    while True:
        start = fp.tell()
        head = fp.read(8)
        if len(head) < 8:
            return None
        group, element = struct.unpack("<HH", head[:4])
        if group != 0x0002:
            return syntax, start
        vr = head[4:6]
        if vr in _LONG_VRS:
            more = fp.read(4)
            if len(more) < 4:
                return None
            length = struct.unpack("<I", more)[0]
        else:
            length = struct.unpack("<H", head[6:8])[0]
        if length > MB:
            return None
        value = fp.read(length)
        if element == 0x0010:
            syntax = value.decode("ascii", "replace").strip("\0 ")


def _dataset_dimensions(ds) -> Dimensions | None:
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    return Dimensions(columns, rows, max(frames, 1), max(samples, 1))


def _read_header(header: bytes) -> Dimensions | None:
    """The geometry in the first bytes of an (inflated) explicit VR little endian data set."""
    from pydicom.filereader import read_dataset

    try:
        ds = read_dataset(
            io.BytesIO(header),
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=lambda tag, vr, length: tag >= 0x7FE00010,
        )
        return _dataset_dimensions(ds)
    except Exception:  # noqa: BLE001  a header cut short or broken: left to the decoder
        return None


def _deflated_dimensions(name: str | Path, fp: BinaryIO, max_pixels: int) -> Dimensions | None:
    """Inflate a deflated DICOM data set step by step, each step's output bounded: the header comes
    from its first megabyte (checked against the cap at once), and the stream is refused when it
    inflates beyond what an image within the cap can need."""
    bound = max_pixels * _BYTES_PER_SAMPLE + _HEADER_ALLOWANCE
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    kept, total, pending, dims, parsed = bytearray(), 0, b"", None, False
    try:
        while not inflater.eof:
            if not pending:
                pending = fp.read(_CHUNK)
                if not pending:
                    break  # truncated stream: the decoder reports it
            out = inflater.decompress(pending, _CHUNK)
            pending = inflater.unconsumed_tail
            total += len(out)
            if len(kept) < _DEFLATE_HEADER:
                kept += out[: _DEFLATE_HEADER - len(kept)]
            if not parsed and (len(kept) >= _DEFLATE_HEADER or inflater.eof):
                parsed, dims = True, _read_header(bytes(kept))
                if dims is not None:
                    check_pixels(name, dims, max_pixels)
            if total > bound:
                raise _error(
                    name,
                    f"deflated DICOM inflates beyond {bound / MB:,.0f} MB, more than an image "
                    f"within the cap of {pixel_count(max_pixels)} can need (preprocess.max_pixels)",
                )
    except zlib.error:
        raise _error(name, "deflated DICOM data cannot be inflated (corrupt)") from None
    return dims if parsed else _read_header(bytes(kept))


def dicom_dimensions(name: str | Path, fp: BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dimensions | None:
    """A DICOM's Rows x Columns x NumberOfFrames x SamplesPerPixel, read with the pixel data left unread.

    The deflated transfer syntax is inflated incrementally: its header comes from the first megabyte,
    and the whole stream must not inflate beyond what `max_pixels` samples (of up to 64 bits) plus
    16 MB of other content need.

    Args:
        name: What to call the file in an error.
        fp: The file (seekable), positioned anywhere.
        max_pixels: The cap (a deflated header over it is refused before the rest inflates).

    Returns:
        The dimensions, or None when the header has no geometry or cannot be read (left to the decoder).

    Raises:
        ImageError: a deflated data set over the cap, inflating beyond the bound, or corrupt.
    """
    import pydicom

    meta = _meta_transfer_syntax(fp)
    if meta is None:
        return None
    syntax, start = meta
    if syntax == DEFLATED:
        fp.seek(start)
        return _deflated_dimensions(name, fp, max_pixels)
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=256 * 1024)
    except Exception:  # noqa: BLE001  pydicom raises many types for broken headers: left to the decoder
        return None
    return _dataset_dimensions(ds)


def header_dimensions(name: str | Path, fp: BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dimensions | None:
    """The dimensions a PNG, JPEG or DICOM header declares, before anything decodes.

    Args:
        name: What to call the file in an error.
        fp: The file (seekable, positioned at its start).
        max_pixels: The cap (bounds a deflated DICOM's inflation).

    Returns:
        The dimensions, or None for another format or a header without them (left to the decoder).
    """
    head = fp.read(132)
    fp.seek(0)
    found = kind(head)
    if found == "png":
        return png_dimensions(fp)
    if found == "jpeg":
        return jpeg_dimensions(fp)
    if found == "dicom":
        return dicom_dimensions(name, fp, max_pixels)
    return None


def check_size(name: str | Path, size: int, max_bytes: int) -> None:
    """Refuse a file of more than `max_bytes` bytes (before it is read).

    Args:
        name: What to call the file in the error.
        size: Its size in bytes (from stat, or the length of bytes in hand).
        max_bytes: The cap.

    Raises:
        ImageError: the file is over the cap.
    """
    if size > max_bytes:
        raise _error(
            name, f"file of {size / MB:,.1f} MB exceeds the cap of {max_bytes / MB:,.0f} MB (preprocess.max_file_mb)"
        )


def check_pixels(name: str | Path, dims: Dimensions, max_pixels: int) -> None:
    """Refuse an image that declares more than `max_pixels` samples.

    Args:
        name: What to call the file in the error.
        dims: What its header declares.
        max_pixels: The cap.

    Raises:
        ImageError: the image is over the cap.
    """
    if dims.pixels > max_pixels:
        raise _error(
            name,
            f"image of {dims} = {pixel_count(dims.pixels)} exceeds the cap of "
            f"{pixel_count(max_pixels)} (preprocess.max_pixels)",
        )


def check_image(
    name: str | Path,
    source: bytes | Path,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_FILE_MB * MB,
) -> Dimensions | None:
    """Refuse an image file (or its bytes) that is too large, or declares too many pixels, before it decodes.

    A path is sized by stat first and only its header is read from the file; bytes in hand are sized
    by their length. Unknown formats pass, to be judged by their decoder.

    Args:
        name: What to call the file in an error (e.g. its relative path, or `image[3]`).
        source: The file's path or its content.
        max_pixels: Cap on width x height x frames x samples (preprocess.max_pixels); None: no cap.
        max_bytes: Cap on the file's size in bytes (preprocess.max_file_mb, in bytes); None: no cap.

    Returns:
        The dimensions its header declares, or None when they were not read (no pixel cap, unknown format).

    Raises:
        ImageError: one line `name: reason` for a file over either cap (FileNotFoundError and other
            OSErrors of a path pass through).
    """
    if max_bytes is not None:
        check_size(name, source.stat().st_size if isinstance(source, Path) else len(source), max_bytes)
    if max_pixels is None:
        return None
    if isinstance(source, Path):
        with source.open("rb") as fp:
            dims = header_dimensions(name, fp, max_pixels)
    else:
        dims = header_dimensions(name, io.BytesIO(source), max_pixels)
    if dims is not None:
        check_pixels(name, dims, max_pixels)
    return dims
