"""The bad-input corpus through the real flow: each case named by file and reason, nothing lost."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.helpers import write_dicom, write_params

pytestmark = pytest.mark.slow


def _manifest(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "manifest.csv", dtype=str, keep_default_na=False)


def zero_byte(d):
    rel = _manifest(d).path[0]
    (d / rel).write_bytes(b"")
    return d, [rel, "empty file (0 bytes)"]


def truncated_png(d):
    rel = _manifest(d).path[1]
    (d / rel).write_bytes((d / rel).read_bytes()[:100])
    return d, [rel, "not a decodable image"]


def text_named_png(d):
    rel = _manifest(d).path[2]
    (d / rel).write_text("patient notes, not an image")
    return d, [rel, "not a decodable image"]


def unknown_label(d):
    m = _manifest(d)
    m.loc[3, "label"] = "pneumothorax"
    m.to_csv(d / "manifest.csv", index=False)
    return d, [m.path[3], "label known", "pneumothorax"]


def missing_file(d):
    rel = _manifest(d).path[4]
    (d / rel).unlink()
    return d, [rel, "file exists"]


def escaping_path(d):
    m = _manifest(d)
    shutil.copy(d / m.path[5], d.parent / "secret.png")
    m.loc[5, "path"] = "../secret.png"
    m.to_csv(d / "manifest.csv", index=False)
    return d, ["../secret.png", "path inside the data root"]


def dicom_without_pixels(d):
    m = _manifest(d)
    write_dicom(d / "images/normal/nopix.dcm", np.zeros((4, 4), np.uint16), with_pixels=False)
    m.loc[len(m)] = ["images/normal/nopix.dcm", "normal", "nopix"]
    m.to_csv(d / "manifest.csv", index=False)
    return d, ["nopix.dcm", "DICOM has no pixel data"]


def all_black(d):
    rel = _manifest(d).path[6]
    cv2.imwrite(str(d / rel), np.zeros((32, 32), np.uint8))
    return d, [rel, "not blank"]


def same_image_in_train_and_test(d):
    m = _manifest(d)
    m["split"] = ["train", "train", "train", "val", "test"] * (len(m) // 5) + ["train"] * (len(m) % 5)
    test_rel = m.path[m.split == "test"].iloc[0]
    train_copy = "images/normal/also_in_train.png"
    shutil.copy(d / test_rel, d / train_copy)
    m.loc[len(m)] = [train_copy, m.label[m.path == test_rel].iloc[0], "another-patient", "train"]
    m.to_csv(d / "manifest.csv", index=False)
    return d, [test_rel, "each image (sha256) in one split"]


def empty_class_folder(d):
    (d / "manifest.csv").unlink()
    for f in (d / "images" / "effusion").iterdir():
        f.unlink()
    return d / "images", ["effusion (empty class folder)", "at least 5 images per class"]


CASES = [
    zero_byte,
    truncated_png,
    text_named_png,
    unknown_label,
    missing_file,
    escaping_path,
    dicom_without_pixels,
    all_black,
    same_image_in_train_and_test,
    empty_class_folder,
]


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory, tiny_data):
    """A project with one registered model, to prove bad data leaves it alone."""
    from flows.training import training_flow

    root = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(tiny_data, root / "data")
    write_params(root)
    assert training_flow(params_file=str(root / "params.yaml")).version == 1
    return root


def _registry(root: Path) -> tuple:
    import mlflow

    uri = f"sqlite:///{root}/mlflow/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = [(v.version, v.run_id) for v in client.search_model_versions("name='medpipe-classifier'")]
    return versions, len(client.search_runs(["1"]))


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_input_stops_the_flow_and_keeps_everything(trained, tmp_path, tiny_data, case):
    from flows.training import training_flow

    shutil.copytree(tiny_data, tmp_path / "data")
    data, fragments = case(tmp_path / "data")
    before, model_before, data_before = _registry(trained), _snapshot(trained / "outputs/train"), _snapshot(data)
    state = training_flow(params_file=str(trained / "params.yaml"), data=str(data), return_state=True)
    assert state.is_failed()
    assert "\n" not in state.message
    for fragment in fragments:
        assert fragment in state.message or fragment in (trained / "outputs/validate/report.md").read_text()
    assert fragments[0] in (trained / "outputs/validate/report.md").read_text()
    assert _registry(trained) == before
    assert _snapshot(trained / "outputs/train") == model_before
    assert _snapshot(data) == data_before


def test_cli_prints_one_line_and_no_traceback(trained, tmp_path, tiny_data):
    from prefect.settings import PREFECT_API_URL

    shutil.copytree(tiny_data, tmp_path / "data")
    data, fragments = zero_byte(tmp_path / "data")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "300"}
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("medpipe")),
            "run",
            "--data",
            str(data),
            "--params",
            str(trained / "params.yaml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {data}: data validation failed")
    assert fragments[0] in last
