"""Validation with real Great Expectations over real files."""

import shutil

import pandas as pd
import pytest

from pipeline.config import Params, Workspace
from pipeline.validate import run_step


def _run(root, tmp_path, **validate):
    params = Params.model_validate({"validate": validate} if validate else {})
    return run_step(params, Workspace(base=tmp_path, data_root=root, out=tmp_path / "outputs"))


@pytest.fixture
def data(tmp_path, tiny_data):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


def test_reports_elsewhere_share_the_workspace_scan_cache(data, tmp_path):
    ws = Workspace(base=tmp_path, data_root=data, out=tmp_path / "outputs")
    assert run_step(Params(), ws, tmp_path / "outputs" / "reports" / "data").success  # as `medpipe validate DIR`
    cache = tmp_path / "outputs" / "cache" / "scan.csv"
    assert not (tmp_path / "outputs" / "reports" / "cache").exists()
    scanned = pd.read_csv(cache, keep_default_na=False)
    scanned.loc[0, "mean"] = -1.0  # a marker: kept if the row is reused, gone if the image is read again
    scanned.to_csv(cache, index=False)
    assert run_step(Params(), ws).success  # as the flow's validate step
    assert pd.read_csv(cache, keep_default_na=False).loc[0, "mean"] == -1.0  # the same cache, not rescanned


def test_valid_data_passes_and_writes_reports(data, tmp_path):
    report = _run(data, tmp_path)
    assert report.success
    assert not report.failed
    assert report.n_images > 60
    assert (tmp_path / "outputs/validate/report.json").is_file()
    assert "PASSED" in (tmp_path / "outputs/validate/report.md").read_text()
    html = (tmp_path / "outputs/validate/report.html").read_text()
    assert "PASSED" in html
    assert "http" not in html  # self-contained: reads offline


def _corrupt(data, case):
    manifest = pd.read_csv(data / "manifest.csv", dtype=str)
    first = data / manifest.loc[0, "path"]
    if case == "unknown label":
        manifest.loc[0, "label"] = "pneumothorax"
    elif case == "missing file":
        first.unlink()
    elif case == "path escapes root":
        manifest.loc[0, "path"] = "../outside.png"
        shutil.copy(first, data.parent / "outside.png")
    elif case == "text named png":
        first.write_text("this is not an image")
    elif case == "zero-byte file":
        first.write_bytes(b"")
    elif case == "truncated png":
        first.write_bytes(first.read_bytes()[:60])
    elif case == "duplicate path":
        manifest = pd.concat([manifest, manifest.iloc[:1]])
    manifest.to_csv(data / "manifest.csv", index=False)
    return manifest.iloc[0]["path"]


@pytest.mark.parametrize(
    "case, check",
    [
        ("unknown label", "label known"),
        ("missing file", "file exists"),
        ("path escapes root", "path inside the data root"),
        ("text named png", "image readable"),
        ("zero-byte file", "image readable"),
        ("truncated png", "image readable"),
        ("duplicate path", "path listed once"),
    ],
)
def test_bad_input_is_reported_by_file_and_reason(data, tmp_path, case, check):
    path = _corrupt(data, case)
    report = _run(data, tmp_path)
    failed = {c.name: c.unexpected for c in report.failed}
    assert not report.success
    assert check in failed
    assert any(path in example for example in failed[check])
    assert "FAILED" in (tmp_path / "outputs/validate/report.md").read_text()


def test_too_few_images_in_a_class(data, tmp_path):
    report = _run(data, tmp_path, min_per_class=1000)
    assert [c.name for c in report.failed] == ["at least 1000 images per class"]
    assert report.summary().startswith("1 of 12 checks failed")


def test_missing_manifest_is_a_failed_report_not_a_crash(tmp_path):
    report = _run(tmp_path / "nowhere", tmp_path)
    assert not report.success
    assert "data folder not found" in report.failed[0].unexpected[0]


def test_blank_image_is_an_error_or_a_warning(data, tmp_path):
    import cv2
    import numpy as np

    rel = pd.read_csv(data / "manifest.csv")["path"][0]
    cv2.imwrite(str(data / rel), np.zeros((32, 32), np.uint8))
    report = _run(data, tmp_path)
    assert not report.success
    assert {c.name: c.unexpected for c in report.failed}["not blank"] == [rel]
    # near-duplicate checks off: this asserts the blank and blur warnings alone
    relaxed = _run(data, tmp_path, blank="warning", near_duplicates={"enabled": False})
    assert relaxed.success
    assert {c.name for c in relaxed.warnings} == {"not blank (warning)", "not blurry (warning)"}


def test_same_image_in_two_splits_and_patient_in_two_splits(data, tmp_path):
    manifest = pd.read_csv(data / "manifest.csv", dtype=str)
    manifest["split"] = "train"
    manifest.loc[len(manifest) - 10 :, "split"] = "test"
    manifest.loc[len(manifest) - 20 : len(manifest) - 11, "split"] = "val"
    leaked = manifest.loc[len(manifest) - 1, "path"]
    manifest.loc[len(manifest)] = [
        leaked.replace(".png", "_copy.png"),
        manifest.loc[len(manifest) - 1, "label"],
        "someone-else",
        "train",
    ]
    shutil.copy(data / leaked, data / leaked.replace(".png", "_copy.png"))
    manifest.to_csv(data / "manifest.csv", index=False)
    failed = {c.name: c.unexpected for c in _run(data, tmp_path).failed}
    assert any(leaked in e for e in failed["each image (sha256) in one split"])
    assert "each patient in one split" in failed  # the predefined split cuts through patients


def test_computed_split_keeps_copies_together(data, tmp_path):
    manifest = pd.read_csv(data / "manifest.csv", dtype=str)
    for i in range(5):  # the same image filed under five new patients
        copy = f"images/normal/copy{i}.png"
        shutil.copy(data / manifest.loc[0, "path"], data / copy)
        manifest.loc[len(manifest)] = [copy, "normal", f"other{i}"]
    manifest.to_csv(data / "manifest.csv", index=False)
    report = _run(data, tmp_path)
    assert report.success
    splits = pd.read_csv(tmp_path / "outputs/validate/splits.csv")
    assert splits[splits.path.str.contains("copy") | (splits.path == manifest.loc[0, "path"])]["split"].nunique() == 1


def _published(data, splits_of_patient) -> pd.DataFrame:
    """Give the manifest a split column, by patient (a published split that keeps patients whole)."""
    manifest = pd.read_csv(data / "manifest.csv", dtype=str)
    patients = sorted(manifest["patient_id"].unique())
    manifest["split"] = manifest["patient_id"].map({p: splits_of_patient(i) for i, p in enumerate(patients)})
    manifest.to_csv(data / "manifest.csv", index=False)
    return manifest


def test_a_published_split_without_val_gets_one_carved_from_train(data, tmp_path):
    manifest = _published(data, lambda i: "test" if i % 5 == 0 else "train")
    report = _run(data, tmp_path)
    assert report.success
    carved = [c for c in report.warnings if c.name == "val split carved from train"]
    assert len(carved) == 1
    assert "no val rows" in carved[0].unexpected[0]
    splits = pd.read_csv(tmp_path / "outputs/validate/splits.csv", dtype=str)
    assert set(splits["split"]) == {"train", "val", "test"}
    was = manifest.set_index("path")["split"]
    assert (splits.set_index("path")["split"][was == "test"] == "test").all()  # test rows stay test
    assert (splits.groupby("patient_id")["split"].nunique() == 1).all()  # val takes whole patients


def test_a_published_split_without_test_rows_is_one_failed_check(data, tmp_path):
    _published(data, lambda i: "val" if i % 5 == 0 else "train")
    report = _run(data, tmp_path)
    assert not report.success
    reason = report.failed[0].unexpected[0]
    assert "its split column has no test rows" in reason
    assert "\n" not in reason


def test_colour_trained_in_gray_is_a_warning_and_the_report_names_the_colour(tmp_path):
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "stained"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            cv2.imwrite(str(root / label / f"{i}.png"), np.dstack([gray, gray // 2, 255 - gray]))

    def validated(color: str):
        params = Params.model_validate({"validate": {"labels": ["a", "b"]}, "preprocess": {"color": color}})
        return run_step(params, Workspace(base=tmp_path, data_root=root, out=tmp_path / color))

    gray = validated("gray")
    kept = [c for c in gray.warnings if c.name == "colour kept"]
    assert gray.success
    assert len(kept) == 1
    assert kept[0].unexpected[0].startswith("12 of 12 images carry colour")
    assert "Colour: gray" in (tmp_path / "gray/validate/report.md").read_text()
    rgb = validated("rgb")
    assert not [c for c in rgb.warnings if c.name == "colour kept"]
    assert rgb.color == "rgb"


def test_unknown_labels_fail_naming_the_files_and_the_data_classes(data, tmp_path):
    from pipeline.validate import failure

    manifest = pd.read_csv(data / "manifest.csv", dtype=str)
    manifest.loc[3, "label"] = "pneumothorax"  # one image of a class params do not pin
    manifest.to_csv(data / "manifest.csv", index=False)
    report = _run(data, tmp_path)
    message = str(failure(report, data))
    assert "label known" in message
    assert manifest.loc[3, "path"] in message
    assert "\n" not in message
    assert "--set validate.labels=effusion,nodule,normal,pneumothorax" in message


def test_unlabelled_images_are_counted_and_in_no_split(data, tmp_path):
    manifest = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    labelled = len(manifest)
    pool = data / "unlabelled"
    pool.mkdir()
    for k, rel in enumerate(manifest["path"][:3]):
        shutil.copy(data / rel, pool / f"new{k}.png")  # (copies of labelled images: still kept out of training)
    rows = pd.DataFrame({"path": [f"unlabelled/new{k}.png" for k in range(3)], "label": "", "patient_id": ""})
    pd.concat([manifest, rows]).to_csv(data / "manifest.csv", index=False)
    report = _run(data, tmp_path)
    assert report.success, report.summary()
    assert (report.n_images, report.n_unlabelled) == (labelled, 3)
    splits = pd.read_csv(tmp_path / "outputs/validate/splits.csv")
    assert not splits["path"].str.startswith("unlabelled/").any()
    assert "Unlabelled: 3 image(s), in no split" in (tmp_path / "outputs/validate/report.md").read_text()
    assert "Unlabelled: 3 image(s), in no split" in (tmp_path / "outputs/validate/report.html").read_text()
