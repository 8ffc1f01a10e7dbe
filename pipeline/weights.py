"""Weight files medpipe writes and reads: encoder files (.npz of NumPy arrays and a JSON description), read
without unpickling anything and with every array's size checked against the file before it is read."""

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError

ENCODER_MAX_BYTES = 2**31  # an encoder file whose arrays would take more is refused unread


def save_encoder(encoder: Any, path: Path, about: dict) -> None:
    """Write an encoder's weights as NumPy arrays (no pickle), with what they fit, atomically.

    Args:
        encoder: The encoder (model.encoder_of).
        path: The .npz file.
        about: What the weights are: architecture and input shape (checked on loading), and whatever
            else the caller records (how they were trained).
    """
    arrays: dict[str, Any] = {f"w{i:05d}": np.asarray(w) for i, w in enumerate(encoder.get_weights())}
    arrays["about"] = np.array(json.dumps(about, sort_keys=True))  # a unicode array: loads without pickle
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _check_members(path: Path) -> None:
    """Refuse an .npz whose arrays would need unpickling or take more memory than the file holds or than
    ENCODER_MAX_BYTES, reading only the array headers."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version not in ((1, 0), (2, 0)):
                    raise ConfigError(path, f"not a medpipe encoder file ({info.filename}: .npy version {version})")
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(member)
            if dtype.hasobject:
                raise ConfigError(path, "not a medpipe encoder file (it holds pickled objects, never loaded)")
            size = math.prod(shape) * dtype.itemsize
            total += size
            if size > info.file_size or total > ENCODER_MAX_BYTES:
                raise ConfigError(path, f"not a medpipe encoder file ({info.filename}: sizes do not add up)")


def read_encoder(path: Path) -> tuple[dict, list[np.ndarray]]:
    """An encoder file's description and weight arrays (nothing unpickled; sizes checked before reading).

    Args:
        path: The .npz file (save_encoder).

    Returns:
        (about, weights in order).

    Raises:
        ConfigError: The file is not an encoder file, or its arrays are larger than it or ENCODER_MAX_BYTES.
    """
    return _read(path, arrays=True)


def read_about(path: Path) -> dict:
    """An encoder file's description alone (its arrays checked as read_encoder does, not read).

    Args:
        path: The .npz file (save_encoder).

    Returns:
        The description (architecture, input_shape, run_id, ...).

    Raises:
        ConfigError: As read_encoder.
    """
    return _read(path, arrays=False)[0]


def _read(path: Path, arrays: bool) -> tuple[dict, list[np.ndarray]]:
    """read_encoder's work; the weight arrays only with `arrays`."""
    if not zipfile.is_zipfile(path):
        raise ConfigError(path, "not a medpipe encoder file (not an .npz archive)")
    try:
        _check_members(path)
        with np.load(path, allow_pickle=False) as npz:
            about = json.loads(str(npz["about"]))
            names = sorted((k for k in npz.files if k.startswith("w")), key=lambda k: int(k[1:]))
            weights = [npz[k] for k in names] if arrays else []
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, MemoryError) as exc:
        raise ConfigError(path, f"not a medpipe encoder file ({type(exc).__name__})") from None
    if not isinstance(about, dict):
        raise ConfigError(path, "not a medpipe encoder file (no description)")
    return about, weights
