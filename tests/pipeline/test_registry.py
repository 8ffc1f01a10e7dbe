"""The registry as medpipe reads it: task signatures, and loading a version without running its artifacts."""

import json
import pickle

import pytest

from pipeline.config import Params, PreprocessParams
from pipeline.errors import ConfigError, MedpipeError
from pipeline.registry import signature_conflict, task_signature


def test_signatures_differ_by_task_not_by_recipe():
    gray64 = task_signature(["a", "b"], PreprocessParams(size=64))
    rgb128 = task_signature(["a", "b"], PreprocessParams(size=128, color="rgb", normalize="zscore"))
    assert signature_conflict(rgb128, gray64, 3, "m") is None  # scored each through its own preprocessing
    other = signature_conflict(task_signature(["benign", "malignant"], PreprocessParams()), gray64, 3, "m")
    assert "classifies benign, malignant but @champion version 3 of 'm' classifies a, b" in other
    assert "--set register.model_name=" in other


class _Boom:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling this creates the marker file


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One real version, logged as medpipe logs them (models from code), champion of 'm'."""
    import cv2
    import mlflow
    import numpy as np

    from pipeline.config import ModelParams
    from pipeline.model import build_model
    from pipeline.registry import file_sha256
    from pipeline.serving import log_pyfunc

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/m.db"
    pp = PreprocessParams(size=16)
    build_model(ModelParams(), (16, 16, 1), 2).save(root / "model.keras")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("e", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_pyfunc(
            root / "model.keras",
            ["a", "b"],
            pp,
            cv2.imencode(".png", np.zeros((16, 16), np.uint8))[1].tobytes(),
            root,
            pip_requirements=["mlflow"],
        )
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    tags = {
        "medpipe.classes": json.dumps(["a", "b"]),
        "medpipe.model_sha256": file_sha256(root / "model.keras", root / "serving.json"),
        "medpipe.task_signature": json.dumps(task_signature(["a", "b"], pp)),
    }
    client.create_model_version("m", source=info.model_uri, run_id=run.info.run_id, tags=tags, model_id=info.model_id)
    client.set_registered_model_alias("m", "champion", "1")
    return (
        root,
        uri,
        Params.model_validate(
            {"register": {"tracking_uri": uri, "model_name": "m"}, "validate": {"labels": ["a", "b"]}}
        ),
    )


def test_new_versions_hold_no_pickle_and_load_without_unpickling(registered):
    from pipeline.registry import load_classifier

    root, _, params = registered
    model_dir = next((root / "artifacts").rglob("MLmodel")).parent
    assert not list(model_dir.rglob("*.pkl"))
    assert (model_dir / "served_model.py").is_file()
    marker = root / "pwned"
    (model_dir / "python_model.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))  # a hostile artifact
    classifier, version = load_classifier("models:/m@champion", params.register_, root, params.preprocess)
    assert version == 1
    assert classifier.classes == ["a", "b"]
    assert classifier.pp.size == 16
    assert not marker.exists()  # nothing from the artifact store was unpickled


def test_a_changed_artifact_is_refused(registered):
    from pipeline.registry import load_classifier

    root, _, params = registered
    config = next((root / "artifacts").rglob("serving.json"))
    original = config.read_text()
    try:
        config.write_text(original.replace('"a"', '"x"', 1))
        with pytest.raises(MedpipeError, match="artifacts changed since registration"):
            load_classifier("models:/m/1", params.register_, root, params.preprocess)
    finally:
        config.write_text(original)


def test_a_run_of_another_task_is_refused_before_any_work(registered):
    from pipeline.config import Workspace
    from pipeline.registry import check_task

    root, _, params = registered
    ws = Workspace(base=root, data_root=root, out=root / "outputs")
    check_task(params, ws)  # same classes: fine
    other = Params.model_validate({**params.model_dump(by_alias=True), "validate": {"labels": ["x", "y", "z"]}})
    with pytest.raises(ConfigError, match="register.model_name: this run classifies x, y, z but @champion"):
        check_task(other, ws)


def test_unknown_versions_are_one_line_errors(registered):
    from pipeline.registry import find_version

    root, _, params = registered
    with pytest.raises(MedpipeError, match="no such registered model version"):
        find_version("models:/m/999", params.register_, root)
