"""The whole flow against a real `mlflow server` on 127.0.0.1 (a shared tracking server, as teams run)."""

import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.helpers import (
    BIN,
    CHROMIUM,
    IMAGES_JS,
    NO_CHROMIUM,
    assert_offline,
    chromium_page,
    free_port,
    guarded_env,
    start_process,
    stop,
    wait_until_up,
    write_params,
)

pytestmark = pytest.mark.slow


class Tracked(NamedTuple):
    """A tiny project trained twice against a real tracking server, which is still up."""

    url: str
    store: Path
    project: Path
    first: Any
    second: Any


@pytest.fixture(scope="module")
def tracked(prefect_harness, tmp_path_factory, tiny_data):
    from flows.training import training_flow

    store, project = tmp_path_factory.mktemp("server"), tmp_path_factory.mktemp("tracked")
    shutil.copytree(tiny_data, project / "data")
    port = free_port()
    server = start_process(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store}/mlflow.db",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        # no job consumers (7 processes): medpipe starts no MLflow server jobs
        guarded_env({**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, store / "netguard.log"),
        store,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", server)
        write_params(project, register={"tracking_uri": url})
        first = training_flow(params_file=str(project / "params.yaml"))
        second = training_flow(params_file=str(project / "params.yaml"))
        yield Tracked(url, store, project, first, second)
    finally:
        stop(server)
    assert_offline(store / "netguard.log")


def test_flow_tracks_registers_and_promotes_on_a_tracking_server(tracked):
    import mlflow

    first, second = tracked.first, tracked.second
    assert (first.version, second.version) == (1, 2)
    assert "@challenger" in second.promotion  # same model again: no gain, no promotion

    client = mlflow.MlflowClient(tracking_uri=tracked.url, registry_uri=tracked.url)
    assert {a: int(v) for a, v in client.get_registered_model("medpipe-classifier").aliases.items()} == {
        "champion": 1,
        "challenger": 2,
    }
    version = client.get_model_version("medpipe-classifier", "2")
    assert version.tags["medpipe.promotion"] == "challenger"
    assert version.description.startswith("seed_cnn")
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "evaluation")}
    assert "evaluation/report.md" in artifacts  # artifacts went through the server
    assert (tracked.store / "artifacts").is_dir()
    assert not (tracked.project / "mlflow").exists()  # nothing local
    assert client.get_run(first.run_id).data.metrics["test_roc_auc"] == pytest.approx(first.test_metrics["roc_auc"])


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_run_page_shows_the_learning_curves_first_and_the_figures_load(tracked, tmp_path):
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=tracked.url).get_run(tracked.first.run_id)
    page = f"{tracked.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics"
    # the image sections come once the page has listed the run's images, after the metric sections
    listed = "['Model metrics', 'gradcam'].every(title => document.body.innerText.includes(title + '\\n('))"
    text = chromium_page(page, listed, "document.body.innerText")
    sections = re.findall(r"\n([^\n]+)\n\((\d+)\)\nAdd chart", text)  # each section's title and chart count
    assert [title for title, _ in sections] == ["curves", "figures", "gradcam", "Model metrics"], sections
    assert dict(sections)["curves"] == "6"  # train_loss, train_accuracy, val_loss, val_accuracy, val_roc_auc, lr
    assert dict(sections)["figures"] == "4"
    images = chromium_page(page, "document.querySelectorAll('img[src*=\"get-artifact\"]').length >= 4", IMAGES_JS)
    shown = [ok for src, ok in images if "get-artifact" in src]  # the image charts, through the server
    assert len(shown) >= 4
    assert all(shown), images
