"""The training deployment from a Prefect work pool, for real: a `prefect server start` on 127.0.0.1, a
process work pool, `prefect deploy` of the repo's prefect.yaml, and a process worker that runs it."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers import (
    BIN,
    CHROMIUM,
    IMAGES_JS,
    NO_CHROMIUM,
    REPO,
    api_call,
    chromium_page,
    guarded_env,
    prefect_server_env,
    start_prefect_server,
    start_process,
    stop,
    wait_for,
    wait_for_run,
    write_params,
)

pytestmark = pytest.mark.slow


def _prefect(args: list[str], env: dict, cwd) -> str:
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


class Deployed(NamedTuple):
    """The training deployment run once by a process worker; its Prefect server (with its UI) still up."""

    api: str
    run: dict
    project: Path


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, tiny_data):
    project, tmp_path = tmp_path_factory.mktemp("pool_project"), tmp_path_factory.mktemp("pool")
    shutil.copytree(tiny_data, project / "data")
    write_params(project)
    for part in ("flows", "pipeline", "prefect.yaml"):  # the project as a team's clone has it
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, project / part)
    api, env = prefect_server_env(tmp_path)
    env = guarded_env(env, tmp_path / "netguard.log")
    env["MEDPIPE_HOME"] = str(project)  # the deployment's pull step: where the worker runs the flow
    if CHROMIUM is not None:  # the UI, to look at the artifacts as users do
        env.update(PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=api)
    server = start_prefect_server(api, env, tmp_path)
    worker = None
    try:
        _prefect(["work-pool", "create", "medpipe-process", "--type", "process"], env, project)
        _prefect(["deploy", "--name", "medpipe-retraining"], env, project)
        deployment = api_call(f"{api}/deployments/filter", {})[0]
        assert deployment["work_pool_name"] == "medpipe-process"
        assert deployment["global_concurrency_limit"]["limit"] == 1  # one retraining at a time
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * 1"]
        run = api_call(f"{api}/deployments/{deployment['id']}/create_flow_run", {})  # what the schedule does
        worker = start_process([str(BIN / "prefect"), "worker", "start", "--pool", "medpipe-process"], env, project)
        state = wait_for_run(api, run["id"], server, worker)
        assert state == "COMPLETED", api_call(f"{api}/flow_runs/{run['id']}")["state"]["message"]
        stop(worker)
        worker = None
        yield Deployed(api, run, project)
    finally:
        stop(worker, server)
    # Prefect's `work-pool create`/`worker start` look up its collection registry on
    # raw.githubusercontent.com (prefect/server/api/collections.py): the guard refuses it and the
    # deployment still runs offline. Any other attempt fails the test.
    log = tmp_path / "netguard.log"
    attempts = [
        a for a in (log.read_text().splitlines() if log.exists() else []) if "raw.githubusercontent.com" not in a
    ]
    assert attempts == [], attempts


def test_process_work_pool_runs_the_training_deployment(deployed):
    assert json.loads((deployed.project / "outputs" / "register" / "model_version.json").read_text())["version"] == 1
    pool = wait_for(lambda: api_call(f"{deployed.api}/flow_runs/{deployed.run['id']}")["work_pool_name"], 10, "pool")
    assert pool == "medpipe-process"


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_the_evaluation_artifact_shows_its_figures_in_the_prefect_ui(deployed):
    (artifact,) = api_call(f"{deployed.api}/artifacts/filter", {"artifacts": {"key": {"any_": ["medpipe-evaluation"]}}})
    ui = deployed.api.removesuffix("/api")
    embedded = "document.querySelectorAll('img[src^=\"data:image/png\"]').length >= 4"
    links = "[...document.querySelectorAll('a')].map(a => a.href).filter(h => h.includes('#/experiments/'))"
    images, links = chromium_page(f"{ui}/artifacts/artifact/{artifact['id']}", embedded, f"[{IMAGES_JS}, {links}]")
    assert len(images) >= 4  # the four summary figures, embedded
    assert all(ok for _, ok in images), images
    import mlflow

    run_id = json.loads((deployed.project / "outputs/train/run.json").read_text())["run_id"]
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{deployed.project}/mlflow/mlflow.db").get_run(run_id)
    page = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    assert links == [page]  # where `make mlflow-ui` shows the project's store
