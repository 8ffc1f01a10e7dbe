import os

import cv2
import numpy as np
import pandas as pd

from pipeline.scan import COLUMNS, SALT_FILE, scan


def _images(root, n):
    rng = np.random.default_rng(0)
    rels = []
    for i in range(n):
        rel = f"c{i % 2}/img{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), rng.integers(0, 256, (12 + i % 3, 10), dtype=np.uint8))
        rels.append(rel)
    return rels


def test_facts_per_image(tmp_path):
    rels = _images(tmp_path, 3)
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"")
    table = scan(tmp_path, [*rels, "black.png", "bad.png", "../escape.png"])
    assert list(table.columns) == COLUMNS
    assert table["path"].tolist()[-3:] == ["black.png", "bad.png", "../escape.png"]
    first = table.iloc[0]
    assert (first.width, first.height, first.channels, first.bit_depth) == (10, 12, 1, 8)
    assert len(first.sha256) == 64
    assert first["std"] > 50
    assert first.blur > 100
    assert first.readable
    black = table.iloc[3]
    assert black["std"] == 0
    assert black.blur == 0
    assert black.readable
    assert table.iloc[4].error == "empty file (0 bytes)"
    assert not table.iloc[4].readable
    assert table.iloc[5].error == "path outside the data root"


def test_incremental_rescan_reads_only_changed_files(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache" / "scan.csv"
    rels = _images(data, 6)
    first = scan(data, rels, cache=cache)
    cached = pd.read_csv(cache)
    cached.loc[1, "mean"] = -1.0  # a marker: kept if the row is reused, gone if re-read
    cached.to_csv(cache, index=False)
    cv2.imwrite(str(data / rels[0]), np.full((5, 5), 7, np.uint8))
    os.utime(data / rels[0], ns=(1, 1))
    second = scan(data, rels, cache=cache)
    assert second.loc[1, "mean"] == -1.0  # unchanged file: not re-read
    assert second.loc[0, "sha256"] != first.loc[0, "sha256"]
    assert second.loc[0, "width"] == 5


def test_an_unreadable_cache_is_scanned_again_and_rewritten_whole(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache" / "scan.csv"
    rels = _images(data, 4)
    first = scan(data, rels, cache=cache)
    whole = cache.read_text()
    for garbage in ('path,size\n"unterminated', "", first.to_csv(index=False).replace("True", "maybe", 1)):
        cache.write_text(garbage)  # e.g. a disk that filled up, or a hand edit
        again = scan(data, rels, cache=cache)
        pd.testing.assert_frame_equal(again, first)
        assert cache.read_text() == whole
    assert sorted(p.name for p in cache.parent.iterdir()) == ["scan.csv", "scan.salt"]  # no temporary left


def test_parallel_and_serial_agree(tmp_path, monkeypatch):
    from pipeline import scan as module

    monkeypatch.setattr(module, "PARALLEL_BYTES", 0)  # force worker processes for a small set
    rels = _images(tmp_path, 300)
    parallel = scan(tmp_path, rels, workers=2)
    serial = scan(tmp_path, rels, workers=1)
    pd.testing.assert_frame_equal(parallel, serial)


def test_dicom_gets_a_salt_file_and_a_pseudonym(tmp_path):
    from tests.helpers import write_dicom

    write_dicom(tmp_path / "data/a/x.dcm", np.arange(16, dtype=np.uint16).reshape(4, 4))
    table = scan(tmp_path / "data", ["a/x.dcm"], project=tmp_path)
    assert (tmp_path / SALT_FILE).is_file()
    assert table.loc[0, "patient_key"].startswith("P-")
    assert not (tmp_path / "data" / SALT_FILE).exists()  # the data folder stays untouched
    assert "MRN" not in table.to_csv()


def test_label_summary_counts_unreadable_images_and_sizes_per_label():
    from pipeline.scan import label_summary

    table = pd.DataFrame(
        {
            "label": ["a", "a", "b"],
            "readable": [True, False, True],
            "width": [4, 0, 8],
            "height": [4, 0, 6],
            "std": [2.0, 0.0, 4.0],
            "blur": [3.0, 0.0, 5.0],
        }
    )
    assert label_summary(table) == [["a", "2", "1", "4x4", "2.0", "3.0"], ["b", "1", "0", "8x6", "4.0", "5.0"]]
