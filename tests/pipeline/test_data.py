import hashlib

import cv2
import numpy as np
import pytest

from pipeline.data import CLASSES, read_manifest, synthesize
from pipeline.errors import DataError


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    synthesize(tmp_path / "a", 12, 32, seed=3)
    synthesize(tmp_path / "b", 12, 32, seed=3)
    synthesize(tmp_path / "c", 12, 32, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_default_set_shape_classes_and_patients(tmp_path):
    manifest = synthesize(tmp_path, 200, 64, seed=0)
    assert list(manifest.columns) == ["path", "label", "patient_id"]
    assert 500 <= len(manifest) <= 700 and manifest["patient_id"].nunique() == 200
    shares = manifest.groupby("patient_id")["label"].first().value_counts(normalize=True)
    assert shares["normal"] == pytest.approx(0.7, abs=0.01) and shares["effusion"] == pytest.approx(0.1, abs=0.01)
    assert (manifest.groupby("patient_id")["label"].nunique() == 1).all()  # a patient keeps one finding
    img = cv2.imread(str(tmp_path / manifest["path"][0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (64, 64) and img.dtype == np.uint8 and img.std() > 10


def test_findings_change_the_lung_not_a_global_threshold(tmp_path):
    """Lesions are local: mean image brightness alone must not separate the classes."""
    manifest = synthesize(tmp_path, 60, 32, seed=5)
    means = {c: [cv2.imread(str(tmp_path / p), 0).mean() for p in manifest.path[manifest.label == c]]
             for c in CLASSES}
    lo, hi = min(means["normal"]), max(means["normal"])
    assert any(lo <= m <= hi for m in means["nodule"])
    assert any(lo <= m <= hi for m in means["effusion"])


def test_read_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match="missing column"):
        read_manifest(tmp_path)


def test_patient_id_defaults_to_one_patient_per_image(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label\na.png,normal\nb.png,nodule\n")
    assert read_manifest(tmp_path)["patient_id"].tolist() == ["a.png", "b.png"]
