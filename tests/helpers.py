"""Shared test constants and helpers (no side effects: conftest.py does the isolation)."""

import socket
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Tiny but real: 30 patients (~90 images) of 32x32, two epochs.
TINY_PATIENTS, TINY_SIZE = 30, 32
TINY_OVERRIDES = {"preprocess": {"size": TINY_SIZE}, "train": {"epochs": 2, "batch_size": 16, "patience": 2, "min_epochs": 0}}


def write_params(folder: Path, **sections: dict) -> Path:
    """Write the repo's params.yaml, with the tiny overrides and `sections` merged in, to folder."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in {**TINY_OVERRIDES, **sections}.items():
        raw[name] = {**raw.get(name, {}), **values}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


IDENTIFIERS = {"PatientName": "Doe^Jane^Quincy", "PatientID": "MRN-99417-XQ", "PatientBirthDate": "19470312",
               "OtherPatientIDs": "ALT-55821-ZZ", "InstitutionName": "St Example Hospital"}


def write_dicom(path: Path, pixels, *, photometric: str = "MONOCHROME2", slope: float = 1.0,
                intercept: float = 0.0, window: tuple[float, float] | None = None, frames: int = 1,
                with_pixels: bool = True, **identifiers: str) -> Path:
    """A real single- or multi-frame DICOM file (uncompressed, explicit VR little endian)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    for key, value in {**IDENTIFIERS, **identifiers}.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        if frames > 1:
            ds.NumberOfFrames = frames
            pixels = np.stack([pixels] * frames)
        ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process, seconds: int = 180) -> None:
    """Poll `url` until it answers; fail with the server's stderr if `process` dies first."""
    for _ in range(seconds):
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert process.poll() is None, process.stderr.read()[-3000:]
            time.sleep(1)
    raise AssertionError(f"{url} not up within {seconds} s")
