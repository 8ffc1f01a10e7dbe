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


def test_valid_data_passes_and_writes_reports(data, tmp_path):
    report = _run(data, tmp_path)
    assert report.success and not report.failed and report.n_images > 60
    assert (tmp_path / "outputs/validate/report.json").is_file()
    assert "PASSED" in (tmp_path / "outputs/validate/report.md").read_text()
    html = (tmp_path / "outputs/validate/report.html").read_text()
    assert "PASSED" in html and "http" not in html  # self-contained: reads offline


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


@pytest.mark.parametrize("case, check", [
    ("unknown label", "label known"), ("missing file", "file exists"),
    ("path escapes root", "path inside the data root"), ("text named png", "image readable"),
    ("zero-byte file", "image readable"), ("truncated png", "image readable"), ("duplicate path", "path listed once"),
])
def test_bad_input_is_reported_by_file_and_reason(data, tmp_path, case, check):
    path = _corrupt(data, case)
    report = _run(data, tmp_path)
    failed = {c.name: c.unexpected for c in report.failed}
    assert not report.success and check in failed
    assert any(path in example for example in failed[check])
    assert "FAILED" in (tmp_path / "outputs/validate/report.md").read_text()


def test_too_few_images_in_a_class(data, tmp_path):
    report = _run(data, tmp_path, min_per_class=1000)
    assert [c.name for c in report.failed] == ["at least 1000 images per class"]
    assert report.summary().startswith("1 of 10 checks failed")


def test_missing_manifest_is_a_failed_report_not_a_crash(tmp_path):
    report = _run(tmp_path / "nowhere", tmp_path)
    assert not report.success and "data folder not found" in report.failed[0].unexpected[0]
