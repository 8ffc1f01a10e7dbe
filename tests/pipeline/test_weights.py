"""Encoder files: NumPy arrays and a JSON description, never unpickled, sizes checked before reading."""

import zipfile

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.weights import read_about, read_encoder, save_encoder


class _Encoder:
    def get_weights(self) -> list[np.ndarray]:
        return [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]


def test_an_encoder_file_round_trips_and_refuses_what_is_not_one(tmp_path):
    path = tmp_path / "encoder.npz"
    save_encoder(_Encoder(), path, {"architecture": "seed_cnn", "epochs": 2})
    about, weights = read_encoder(path)
    assert about == {"architecture": "seed_cnn", "epochs": 2}
    assert read_about(path) == about  # the description alone
    for a, b in zip(weights, _Encoder().get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match=r"junk.npz: not a medpipe encoder file \(not an .npz archive\)"):
        read_encoder(tmp_path / "junk.npz")
    np.savez(tmp_path / "pickled.npz", about=np.array([{"architecture": "seed_cnn"}], dtype=object))
    with pytest.raises(
        ConfigError, match=r"pickled.npz: not a medpipe encoder file \(it holds pickled objects, never loaded\)"
    ):
        read_encoder(tmp_path / "pickled.npz")  # an object array would need unpickling: refused, never loaded
    np.savez(tmp_path / "no_about.npz", w00000=np.zeros(3))
    with pytest.raises(ConfigError, match=r"no_about.npz: not a medpipe encoder file \(KeyError\)"):
        read_encoder(tmp_path / "no_about.npz")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"cut.npz: not a medpipe encoder file"):
        read_encoder(tmp_path / "cut.npz")


def test_an_encoder_file_whose_arrays_claim_more_than_it_holds_is_refused_unread(tmp_path):
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**13,)}  # 80 TB claimed, 8 bytes stored
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as archive, archive.open("w00000.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, header)
        member.write(np.zeros(1).tobytes())
    with pytest.raises(ConfigError, match=r"bomb.npz: not a medpipe encoder file \(w00000.npy: sizes do not add up\)"):
        read_encoder(tmp_path / "bomb.npz")
