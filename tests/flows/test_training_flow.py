"""The training flow end to end on tiny data: real Prefect, GX, TF, MLflow (SQLite)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _client(project):
    import mlflow

    uri = f"sqlite:///{project}/mlflow/mlflow.db"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def trained_model(project):
    from pipeline.model import load_model

    return load_model(project / "outputs/train/model.keras")


def test_flow_trains_registers_and_is_deterministic(prefect_harness, project):
    import mlflow

    from flows.training import training_flow
    from pipeline.lineage import content_hash
    from pipeline.shards import load_split

    first = training_flow(params_file=str(project / "params.yaml"))
    metrics = json.loads((project / "outputs/metrics.json").read_text())
    second = training_flow(params_file=str(project / "params.yaml"))
    assert (first.version, second.version) == (1, 2)
    # same data + params on CPU -> same metrics and weights
    assert json.loads((project / "outputs/metrics.json").read_text()) == metrics

    client = _client(project)
    v1, v2 = (client.get_model_version("medpipe-classifier", v) for v in ("1", "2"))
    assert v1.tags["medpipe.weights_sha256"] == v2.tags["medpipe.weights_sha256"]
    assert v1.tags["medpipe.data_md5"] == content_hash(project / "data")[0]
    assert v1.tags["medpipe.validation"] == "passed"
    assert v1.tags["medpipe.git_commit"] == "unknown"
    assert len(v1.tags["medpipe.params_md5"]) == 32

    run = client.get_run(first.run_id)
    (data_input,) = run.inputs.dataset_inputs  # the data version, with its split counts
    assert data_input.dataset.name == "data"
    assert data_input.dataset.digest == v1.tags["medpipe.data_md5"][:8]
    tags = {t.key: t.value for t in data_input.tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["data_md5"] == v1.tags["medpipe.data_md5"]
    n_images = len(pd.read_csv(project / "data/manifest.csv"))
    assert sum(int(tags[f"{s}_images"]) for s in ("train", "val", "test")) == n_images
    for key in ("test_accuracy", "test_balanced_accuracy", "test_roc_auc", "val_roc_auc", "test_recall_nodule"):
        assert run.data.metrics[key] == pytest.approx(metrics[key])
    # two epochs of curve, then the final value (restored best weights) as the latest step
    assert [m.step for m in client.get_metric_history(first.run_id, "val_roc_auc")] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "evaluation")}
    for name in ("confusion_matrix.png", "roc_pr.png", "reliability.png", "training_curves.png", "report.md"):
        assert f"evaluation/{name}" in artifacts
    overlays = [a.path for a in client.list_artifacts(first.run_id, "evaluation/gradcam")]
    assert overlays
    assert all(p.endswith(".png") for p in overlays)
    assert metrics["test_roc_auc_ci_low"] <= metrics["test_roc_auc"] <= metrics["test_roc_auc_ci_high"]
    assert run.data.tags["medpipe.data_md5"] == v1.tags["medpipe.data_md5"]

    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("medpipe")),
            "explain",
            str(project / "data" / pd.read_csv(project / "data/manifest.csv")["path"][0]),
            "--model",
            "models:/medpipe-classifier/1",
            "--out",
            str(project / "cam.png"),
            "--params",
            str(project / "params.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    answer = json.loads(done.stdout)
    assert answer["version"] == 1
    assert answer["predictions"][0]["label"] in ("normal", "nodule", "effusion")
    assert sum(answer["predictions"][0]["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert (project / "cam.png").read_bytes()[:4] == b"\x89PNG"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("medpipe")),
            "label",
            "suggest",
            "--images",
            str(project / "data" / "images"),
            "--model",
            "models:/medpipe-classifier/2",
            "--out",
            str(project / "queue.csv"),
            "--params",
            str(project / "params.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    queue = pd.read_csv(project / "queue.csv")
    assert done.returncode == 0
    assert len(queue) == len(pd.read_csv(project / "data/manifest.csv"))
    assert queue["entropy"].is_monotonic_decreasing
    assert Path(queue["gradcam"][0]).is_file()

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/medpipe-classifier/1")  # raw images in, labels out
    assert model.metadata.signature.inputs.input_names() == ["image"]
    assert model.metadata.get_input_schema()
    files = [
        project / "data" / p
        for p in pd.read_csv(project / "outputs/validate/splits.csv").query("split == 'test'")["path"]
    ]
    table = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    proba = table[["normal", "nodule", "effusion"]].to_numpy()
    assert len(table) == len(files)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    x = load_split(project / "outputs/preprocess", "test")[0]  # the very inputs evaluation used
    assert np.allclose(proba, trained_model(project).predict(x, verbose=0), atol=1e-5)


def test_invalid_data_stops_before_preprocessing_and_keeps_the_registry(prefect_harness, project):
    from flows.training import training_flow

    training_flow(params_file=str(project / "params.yaml"))
    dataset = project / "outputs/preprocess/meta.json"
    stamp, n_runs = os.stat(dataset).st_mtime_ns, len(_client(project).search_runs(["1"]))
    bad = pd.read_csv(project / "data/manifest.csv")["path"][3]
    (project / "data" / bad).write_text("not an image")

    state = training_flow(params_file=str(project / "params.yaml"), return_state=True)
    assert state.is_failed()
    assert "data validation failed" in state.message
    assert bad in state.message
    assert "image readable" in state.message
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:  # the validate task itself is Failed, not green
        tasks = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert [t.state.type.value for t in tasks if t.name.startswith("validate")] == ["FAILED"]
    assert os.stat(dataset).st_mtime_ns == stamp  # preprocessing never ran
    client = _client(project)
    assert [int(v.version) for v in client.search_model_versions("name='medpipe-classifier'")] == [1]
    assert len(client.search_runs(["1"])) == n_runs
