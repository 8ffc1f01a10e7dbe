"""The training deployment from a Prefect work pool, for real: a `prefect server start` on 127.0.0.1, a
process work pool, `prefect deploy` of the repo's prefect.yaml, and a process worker that runs it."""

import json
import shutil
import subprocess

import pytest

from tests.helpers import (
    BIN,
    REPO,
    api_call,
    guarded_env,
    prefect_server_env,
    start_prefect_server,
    start_process,
    stop,
    wait_for,
    wait_for_run,
)

pytestmark = pytest.mark.slow


def _prefect(args: list[str], env: dict, cwd) -> str:
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_process_work_pool_runs_the_training_deployment(project, tmp_path):
    for part in ("flows", "pipeline", "prefect.yaml"):  # the project as a team's clone has it
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, project / part)
    api, env = prefect_server_env(tmp_path)
    env = guarded_env(env, tmp_path / "netguard.log")
    env["MEDPIPE_HOME"] = str(project)  # the deployment's pull step: where the worker runs the flow
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
        assert json.loads((project / "outputs" / "register" / "model_version.json").read_text())["version"] == 1
        assert wait_for(lambda: api_call(f"{api}/flow_runs/{run['id']}")["work_pool_name"], 10, "pool name")
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
