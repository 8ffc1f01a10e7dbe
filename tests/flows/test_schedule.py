"""Scheduled retraining for real: a `prefect server start` on 127.0.0.1, `medpipe schedule --cron`
serving the deployment, and a run of it that trains and registers a model."""

import json
import subprocess

import pytest

from tests.helpers import (
    BIN,
    api_call,
    assert_offline,
    guarded_env,
    prefect_server_env,
    start_prefect_server,
    start_process,
    stderr_tail,
    stop,
    wait_for,
    wait_for_run,
)

pytestmark = pytest.mark.slow


def test_schedule_serves_a_cron_deployment_that_retrains(project, tmp_path):
    api, env = prefect_server_env(tmp_path)
    env = guarded_env(env, tmp_path / "netguard.log")
    bad = subprocess.run(
        [str(BIN / "medpipe"), "schedule", "--cron", "every monday", "--params", str(project / "params.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "error: --cron: not a valid cron schedule" in bad.stderr
    server = start_prefect_server(api, env, tmp_path)
    served = None
    try:
        served = start_process(
            [str(BIN / "medpipe"), "schedule", "--cron", "0 2 * * 1", "--params", str(project / "params.yaml")],
            env,
            project,
        )
        deployment = wait_for(lambda: api_call(f"{api}/deployments/filter", {}), 180, "deployment", server, served)[0]
        assert deployment["name"] == "medpipe-retraining"
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * 1"]
        assert deployment["parameters"]["params_file"] == str(project / "params.yaml")
        run = wait_for(
            lambda: api_call(f"{api}/deployments/{deployment['id']}/create_flow_run", {}),
            60,
            "create a run",
            server,
            served,
        )  # what the schedule does on Mondays
        state = wait_for_run(api, run["id"], server, served)
        if state != "COMPLETED":
            stop(served)  # then its stderr can be read to the end
            message = api_call(f"{api}/flow_runs/{run['id']}")["state"]["message"]
            pytest.fail(f"{message}\n{stderr_tail(served, 5000)}")
        assert json.loads((project / "outputs" / "register" / "model_version.json").read_text())["version"] == 1
    finally:
        stop(served, server)
    assert_offline(tmp_path / "netguard.log")
