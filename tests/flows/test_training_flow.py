"""The training flow end to end on tiny data: real Prefect, GX, TF, MLflow (SQLite)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest

from tests.helpers import CHROMIUM, NO_CHROMIUM, chromium_images, write_params

pytestmark = pytest.mark.slow


def _client(project):
    import mlflow

    uri = f"sqlite:///{project}/mlflow/mlflow.db"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def trained_model(project):
    from pipeline.model import load_model

    return load_model(project / "outputs/train/model.keras")


class Twice(NamedTuple):
    """A tiny project trained twice on the same data and params, with a `sex` column named as a subgroup."""

    project: Path
    first: Any
    second: Any
    metrics: dict  # outputs/metrics.json after the first run


@pytest.fixture(scope="module")
def twice(prefect_harness, tmp_path_factory, tiny_data) -> Twice:
    from flows.training import training_flow
    from tests.flows.conftest import guard_network

    project = tmp_path_factory.mktemp("twice")
    shutil.copytree(tiny_data, project / "data")
    manifest = pd.read_csv(project / "data/manifest.csv", dtype=str)
    manifest["sex"] = ["F" if int(pid[1:]) % 2 else "M" for pid in manifest["patient_id"]]  # P0001, ...
    manifest.to_csv(project / "data/manifest.csv", index=False)
    write_params(project, evaluate={"subgroups": ["sex"]})
    with pytest.MonkeyPatch.context() as monkeypatch:
        attempts = guard_network(monkeypatch)
        first = training_flow(params_file=str(project / "params.yaml"))
        metrics = json.loads((project / "outputs/metrics.json").read_text())
        second = training_flow(params_file=str(project / "params.yaml"))
    assert attempts == []
    return Twice(project, first, second, metrics)


def test_same_data_and_params_give_the_same_metrics_and_weights(twice):
    assert (twice.first.version, twice.second.version) == (1, 2)
    assert json.loads((twice.project / "outputs/metrics.json").read_text()) == twice.metrics
    client = _client(twice.project)
    v1, v2 = (client.get_model_version("medpipe-classifier", v) for v in ("1", "2"))
    assert v1.tags["medpipe.weights_sha256"] == v2.tags["medpipe.weights_sha256"]


def test_each_version_carries_its_lineage(twice):
    from pipeline.lineage import content_hash

    v1 = _client(twice.project).get_model_version("medpipe-classifier", "1")
    assert v1.tags["medpipe.data_md5"] == content_hash(twice.project / "data")[0]
    assert v1.tags["medpipe.validation"] == "passed"
    assert v1.tags["medpipe.git_commit"] == "unknown"
    assert len(v1.tags["medpipe.params_md5"]) == 32


def test_the_run_records_its_data_version_as_a_dataset_input(twice):
    client = _client(twice.project)
    v1 = client.get_model_version("medpipe-classifier", "1")
    (data_input,) = client.get_run(twice.first.run_id).inputs.dataset_inputs  # the data version, split counts
    assert data_input.dataset.name == "data"
    assert data_input.dataset.digest == v1.tags["medpipe.data_md5"][:8]
    tags = {t.key: t.value for t in data_input.tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["data_md5"] == v1.tags["medpipe.data_md5"]
    n_images = len(pd.read_csv(twice.project / "data/manifest.csv"))
    assert sum(int(tags[f"{s}_images"]) for s in ("train", "val", "test")) == n_images


def test_the_run_holds_the_metrics_curves_and_figures(twice):
    client, metrics = _client(twice.project), twice.metrics
    run = client.get_run(twice.first.run_id)
    for key in ("test_accuracy", "test_balanced_accuracy", "test_roc_auc", "val_roc_auc", "test_recall_nodule"):
        assert run.data.metrics[key] == pytest.approx(metrics[key])
    # two epochs of curve, then the final value (restored best weights) as the latest step
    assert [m.step for m in client.get_metric_history(twice.first.run_id, "val_roc_auc")] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(twice.first.run_id, "evaluation")}
    for name in ("confusion_matrix.png", "roc_pr.png", "reliability.png", "training_curves.png", "report.md"):
        assert f"evaluation/{name}" in artifacts
    assert "evaluation/report.html" in artifacts
    overlays = [a.path for a in client.list_artifacts(twice.first.run_id, "evaluation/gradcam")]
    assert overlays
    assert all(p.endswith(".png") for p in overlays)
    assert metrics["test_roc_auc_ci_low"] <= metrics["test_roc_auc"] <= metrics["test_roc_auc_ci_high"]


def test_the_curves_have_a_section_first_and_the_figures_are_logged_as_images(twice):
    client, run_id = _client(twice.project), twice.first.run_id

    def history(name: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, name)]

    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_roc_auc", "lr"):
        curve = history(f"curves/{name}")
        assert [step for step, _ in curve] == [0, 1]
        assert history(name)[:2] == curve  # val_roc_auc's record then has the final value
    keys = {a.path.split("+")[0] for a in client.list_artifacts(run_id, "images")}  # <key>+step+<n>+...
    figures = {k for k in keys if k.startswith("images/figures~")}
    assert figures == {f"images/figures~{n}" for n in ("confusion_matrix", "roc_pr", "reliability", "training_curves")}
    overlays = {a.path for a in client.list_artifacts(run_id, "evaluation/gradcam")}
    assert len([k for k in keys if k.startswith("images/gradcam~")]) == len(overlays)


def test_each_version_has_a_model_card_with_its_subgroups(twice):
    from pipeline.card import TAG

    client = _client(twice.project)
    card = (twice.project / "outputs/card/model_card.md").read_text()
    assert card.startswith("# Model card: medpipe-classifier version 2")
    test = pd.read_csv(twice.project / "outputs/validate/splits.csv").query("split == 'test'")
    for sex, n in test["subgroup_sex"].value_counts().items():
        assert f"| sex | {sex} | {n} |" in card
    assert list(pd.read_csv(twice.project / "outputs/validate/splits.csv").columns)[-1] == "subgroup_sex"
    for version in ("1", "2"):
        mv = client.get_model_version("medpipe-classifier", version)
        assert mv.tags[TAG] == "model_card/model_card.html"
        logged = {a.path for a in client.list_artifacts(mv.run_id, "model_card")}
        assert {"model_card/model_card.html", "model_card/model_card.md"} <= logged
    page = (twice.project / "outputs/card/model_card.html").read_text()
    assert page.count("<img ") == page.count('<img src="data:image/png;base64,')  # every figure embedded


def test_a_version_left_without_its_card_gets_it_from_the_outputs_that_are_its_own(twice):
    from pipeline.card import TAG, missing_inputs
    from pipeline.config import Workspace, load_params

    params = load_params(twice.project / "params.yaml")
    ws, client = Workspace.create(params, twice.project / "params.yaml"), _client(twice.project)
    assert missing_inputs(params, ws, 2) is None  # it has its card
    client.delete_model_version_tag("medpipe-classifier", "2", TAG)  # as a crash after the gate leaves it
    try:
        validated, evaluated, registered, decision = missing_inputs(params, ws, 2)
        assert registered.version == 2
        assert decision.version == 2
        assert evaluated.metrics == twice.metrics
        client.delete_model_version_tag("medpipe-classifier", "1", TAG)
        assert missing_inputs(params, ws, 1) is None  # outputs/ hold version 2's results, not 1's
    finally:
        for version in ("1", "2"):
            client.set_model_version_tag("medpipe-classifier", version, TAG, "model_card/model_card.html")


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_report_and_the_card_render_with_every_image_in_chromium(twice):
    for page in ("outputs/card/model_card.html", "outputs/evaluate/report.html"):
        images, broken = chromium_images(twice.project / page)
        assert images >= 4, page
        assert broken == 0, page


def _medpipe(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`medpipe ARGS --params <project>/params.yaml`, as a user runs it."""
    command = [str(Path(sys.executable).with_name("medpipe")), *args, "--params", str(project / "params.yaml")]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_explain_and_label_suggest_use_the_registered_versions(twice):
    project = twice.project
    image = project / "data" / pd.read_csv(project / "data/manifest.csv")["path"][0]
    done = _medpipe(
        project, "explain", str(image), "--model", "models:/medpipe-classifier/1", "--out", str(project / "cam.png")
    )
    answer = json.loads(done.stdout)
    assert answer["version"] == 1
    assert answer["predictions"][0]["label"] in ("normal", "nodule", "effusion")
    assert sum(answer["predictions"][0]["probabilities"].values()) == pytest.approx(1, abs=1e-3)
    assert (project / "cam.png").read_bytes()[:4] == b"\x89PNG"
    images, queue_csv = str(project / "data" / "images"), str(project / "queue.csv")
    done = _medpipe(
        project,
        "label",
        "suggest",
        "--images",
        images,
        "--model",
        "models:/medpipe-classifier/2",
        "--out",
        queue_csv,
        "--thumbnails",
        "2",
    )
    queue = pd.read_csv(project / "queue.csv", keep_default_na=False)
    assert done.returncode == 0
    assert len(queue) == len(pd.read_csv(project / "data/manifest.csv"))
    group = queue["copies"].where(queue["copies"] != "", queue["path"])
    first = group.drop_duplicates().index
    assert first.tolist() == list(range(len(first)))  # one image of each group of near copies first
    assert queue.loc[first, "entropy"].is_monotonic_decreasing  # ... least certain first
    assert Path(queue["gradcam"][0]).is_file()
    assert queue["gradcam"].ne("").tolist() == [True, True] + [False] * (len(queue) - 2)  # the head of the queue


def test_the_labelling_loop_suggests_from_the_unlabelled_pool_and_imports_with_provenance(twice, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(twice.project / "data", data)
    manifest = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    truth = manifest["label"][:6].tolist()
    manifest.loc[:5, "label"] = ""  # six images lose their label: the unlabelled pool
    manifest.to_csv(data / "manifest.csv", index=False)
    queue_csv = tmp_path / "queue.csv"
    done = _medpipe(twice.project, "label", "suggest", "--data", str(data), "--out", str(queue_csv))
    assert done.returncode == 0, done.stderr
    queue = pd.read_csv(queue_csv, dtype=str, keep_default_na=False)
    assert sorted(queue["path"]) == sorted(manifest["path"][:6]) and (queue["label"] == "").all()
    answers = dict(zip(manifest["path"][:6], truth))
    queue["label"] = [answers[p] for p in queue["path"]]  # the expert (here: the held-back truth) fills it in
    queue[:4].to_csv(queue_csv, index=False)
    done = _medpipe(twice.project, "label", "import", str(queue_csv), "--data", str(data), "--reviewer", "dr a")
    assert done.returncode == 0, done.stderr
    assert "4 image(s) labelled, 0 label(s) confirmed" in done.stdout and "2 still unlabelled" in done.stdout
    assert f"version it: medpipe data add {data}" in done.stdout  # no data.dvc beside it
    merged = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False).set_index("path")
    for path in queue["path"][:4]:
        assert merged.loc[path, ["label", "label_source", "reviewed_by"]].tolist() == [answers[path], "expert", "dr a"]
    assert (merged["label"] == "").sum() == 2
    before = (data / "manifest.csv").read_bytes()
    queue.loc[4, "label"] = "pneumonia"
    queue.to_csv(queue_csv, index=False)
    bad = _medpipe(twice.project, "label", "import", str(queue_csv), "--data", str(data))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"error: {queue_csv}: line 6: {queue['path'][4]}: unknown label 'pneumonia' (labels: normal, nodule, effusion)"
    ]
    assert (data / "manifest.csv").read_bytes() == before


def test_a_run_with_semi_learns_from_the_unlabelled_images_and_its_card_says_so(prefect_harness, tmp_path, tiny_data):
    from flows.training import training_flow
    from tests.flows.conftest import guard_network

    shutil.copytree(tiny_data, tmp_path / "data")
    manifest = pd.read_csv(tmp_path / "data/manifest.csv", dtype=str, keep_default_na=False)
    unlabelled = sorted(manifest.loc[manifest["label"] == "normal", "patient_id"].unique())[:6]
    manifest.loc[manifest["patient_id"].isin(unlabelled), "label"] = ""
    manifest.to_csv(tmp_path / "data/manifest.csv", index=False)
    write_params(tmp_path, semi={"method": "pseudo_label", "threshold": 0.34})
    with pytest.MonkeyPatch.context() as monkeypatch:
        attempts = guard_network(monkeypatch)
        training_flow(params_file=str(tmp_path / "params.yaml"))
    assert attempts == []
    semi = json.loads((tmp_path / "outputs/train/semi.json").read_text())["rounds"][0]
    assert semi["pool"] == int((manifest["label"] == "").sum()) and semi["picked"] > 0
    tag = _client(tmp_path).get_model_version("medpipe-classifier", "1").tags["medpipe.semi"]
    assert tag.startswith(f"pseudo_label: {semi['picked']} of {semi['pool']} pool images")
    card = (tmp_path / "outputs/card/model_card.md").read_text()
    assert (
        f"- Unlabelled images: {semi['pool']}, {semi['pool']} usable, in no split; pseudo-labelling: {tag[14:]}."
        in card
    )


def test_the_registered_model_takes_raw_images_and_predicts_as_evaluation_did(twice):
    import mlflow

    from pipeline.shards import load_split

    project = twice.project
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{project}/mlflow/mlflow.db")  # not the last flow's of this process
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
