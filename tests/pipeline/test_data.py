import hashlib

import cv2
import numpy as np
import pytest

from pipeline.data import CLASSES, discover, import_npz, read_manifest, synthesize
from pipeline.errors import ConfigError, DataError


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    synthesize(tmp_path / "a", 12, 32, seed=3)
    synthesize(tmp_path / "b", 12, 32, seed=3)
    synthesize(tmp_path / "c", 12, 32, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_default_set_shape_classes_and_patients(tmp_path):
    manifest = synthesize(tmp_path, 200, 64, seed=0)
    assert list(manifest.columns) == ["path", "label", "patient_id"]
    assert 500 <= len(manifest) <= 700
    assert manifest["patient_id"].nunique() == 200
    shares = manifest.groupby("patient_id")["label"].first().value_counts(normalize=True)
    assert shares["normal"] == pytest.approx(0.7, abs=0.01)
    assert shares["effusion"] == pytest.approx(0.1, abs=0.01)
    assert (manifest.groupby("patient_id")["label"].nunique() == 1).all()  # a patient keeps one finding
    img = cv2.imread(str(tmp_path / manifest["path"][0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (64, 64)
    assert img.dtype == np.uint8
    assert img.std() > 10


def test_findings_change_the_lung_not_a_global_threshold(tmp_path):
    """Lesions are local: mean image brightness alone must not separate the classes."""
    manifest = synthesize(tmp_path, 60, 32, seed=5)
    means = {c: [cv2.imread(str(tmp_path / p), 0).mean() for p in manifest.path[manifest.label == c]] for c in CLASSES}
    lo, hi = min(means["normal"]), max(means["normal"])
    assert any(lo <= m <= hi for m in means["nodule"])
    assert any(lo <= m <= hi for m in means["effusion"])


def test_read_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match="missing column"):
        read_manifest(tmp_path)


def test_optional_manifest_columns_come_back_empty(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label\na.png,normal\nb.png,nodule\n")
    manifest = read_manifest(tmp_path)
    assert manifest["patient_id"].tolist() == ["", ""]
    assert manifest["split"].tolist() == ["", ""]


def test_class_folders_nested_any_suffix_case_and_empty_ones(tmp_path):
    for rel in ("cat/a.png", "cat/deep/er/b.JPG", "dog/c.dcm", "dog/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    manifest, empty, _ = discover(tmp_path)
    assert manifest[["path", "label"]].values.tolist() == [
        ["cat/a.png", "cat"],
        ["cat/deep/er/b.JPG", "cat"],
        ["dog/c.dcm", "dog"],
    ]
    assert empty == ["empty"]
    with pytest.raises(DataError, match="data folder not found"):
        discover(tmp_path / "nope")


@pytest.mark.parametrize("label_shape, rgb", [((-1,), False), ((-1, 1), True)])
def test_import_npz_keeps_splits_labels_and_pixels(tmp_path, label_shape, rgb):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        shape = (n, 8, 8, 3) if rgb else (n, 8, 8)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(label_shape)
    np.savez(tmp_path / "m.npz", **arrays)
    manifest = import_npz(tmp_path / "m.npz", tmp_path / "out", labels=["malignant", "benign"]).manifest
    assert manifest["split"].value_counts().to_dict() == {"train": 6, "test": 3, "val": 2}
    assert manifest["label"][:2].tolist() == ["malignant", "benign"]
    first = cv2.imread(str(tmp_path / "out" / manifest["path"][0]), cv2.IMREAD_UNCHANGED)
    expected = arrays["train_images"][0]
    assert np.array_equal(first[:, :, ::-1] if rgb else first, expected)
    assert read_manifest(tmp_path / "out")["split"].tolist() == manifest["split"].tolist()


def test_import_npz_errors(tmp_path):
    np.savez(tmp_path / "m.npz", train_images=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DataError, match="missing array"):
        import_npz(tmp_path / "m.npz", tmp_path / "out")
    (tmp_path / "bad.npz").write_text("no")
    with pytest.raises(DataError, match="not a readable npz"):
        import_npz(tmp_path / "bad.npz", tmp_path / "out")


def _two_class_npz(path):
    arrays = {f"{s}_images": np.full((2, 4, 4), 7, np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": np.arange(2) for s in ("train", "val", "test")})
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", "nul\0l", "/abs"])
def test_import_npz_refuses_class_names_that_are_not_plain_folder_names(tmp_path, bad):
    source = _two_class_npz(tmp_path / "m.npz")
    (tmp_path / "work").mkdir()
    with pytest.raises(ConfigError, match="class name") as caught:
        import_npz(source, tmp_path / "work" / "out", labels=["ok", bad])
    assert caught.value.file == "--labels"
    assert "\n" not in caught.value.reason
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.npz", "work"]  # nothing written anywhere


@pytest.mark.parametrize("labels", [["neg", "pos"], None])
def test_import_npz_refuses_to_write_through_a_symlink_out_of_out(tmp_path, labels):
    source, outside, out = _two_class_npz(tmp_path / "m.npz"), tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    (out / "images").mkdir(parents=True)
    (out / "images" / "train").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside"):
        import_npz(source, out, labels=labels)
    assert not any(outside.iterdir())


def test_import_npz_writes_only_inside_out(tmp_path):
    out = tmp_path / "out"
    manifest = import_npz(_two_class_npz(tmp_path / "m.npz"), out, labels=["neg", "pos"]).manifest
    assert all((out / rel).resolve().is_relative_to(out.resolve()) for rel in manifest["path"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "out"]


def _manifest(root, rows: str):
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.csv").write_text("path,label,sex,site\n" + rows)
    return read_manifest(root)


def test_subgroup_columns_come_along_row_by_row(tmp_path):
    from pipeline.data import with_subgroups

    manifest = _manifest(tmp_path, "a.png,x,F,north\nb.png,y,,south\n")
    carried = with_subgroups(manifest, tmp_path, ["sex"])
    assert carried["subgroup_sex"].tolist() == ["F", "unknown"]  # an empty value is a group of its own
    assert "subgroup_site" not in carried


def test_a_subgroup_column_the_manifest_lacks_is_one_line_naming_it(tmp_path):
    from pipeline.data import with_subgroups

    manifest = _manifest(tmp_path, "a.png,x,F,north\n")
    with pytest.raises(DataError, match=r"manifest.csv: no column age \(named by evaluate.subgroups\)"):
        with_subgroups(manifest, tmp_path, ["sex", "age"])


def test_class_folders_cannot_carry_subgroups(tmp_path):
    from pipeline.data import with_subgroups

    (tmp_path / "x").mkdir()
    cv2.imwrite(str(tmp_path / "x" / "a.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="class folders carry no columns"):
        with_subgroups(discover(tmp_path).manifest, tmp_path, ["sex"])


def test_a_subgroup_column_of_too_many_values_asks_for_bins(tmp_path):
    from pipeline.data import MAX_SUBGROUPS, with_subgroups

    rows = "".join(f"{i}.png,x,F,{i}\n" for i in range(MAX_SUBGROUPS + 1))
    with pytest.raises(DataError, match=r"column site has 21 distinct values.*age -> age_band"):
        with_subgroups(_manifest(tmp_path, rows), tmp_path, ["site"])


def test_subgroups_stay_aligned_when_the_manifest_has_unlabelled_rows(tmp_path):
    from pipeline.data import with_subgroups

    (tmp_path / "manifest.csv").write_text("path,label,sex\na.png,x,F\nb.png,,M\nc.png,y,\n")
    found = discover(tmp_path)
    assert found.manifest["path"].tolist() == ["a.png", "c.png"] and found.unlabelled["path"].tolist() == ["b.png"]
    assert with_subgroups(found.manifest, tmp_path, ["sex"])["subgroup_sex"].tolist() == ["F", "unknown"]
