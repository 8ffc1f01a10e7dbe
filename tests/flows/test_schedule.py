"""Scheduled retraining for real: a `prefect server start` on 127.0.0.1, `medpipe schedule --cron`
serving the deployment, and a run of it that trains and registers a model."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _api(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait(check, seconds: int, what: str, *processes: subprocess.Popen):
    for _ in range(seconds):
        for process in processes:
            assert process.poll() is None, f"{what}: process exited:\n{process.stderr.read()[-3000:]}"
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{what}: not within {seconds} s")


def _start(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_schedule_serves_a_cron_deployment_that_retrains(project, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": api,
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path}/prefect.db",
           "PREFECT_UI_ENABLED": "false",  # and the server services this test does not need (a 2-core box):
           **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in (
               "CANCELLATION_CLEANUP", "FOREMAN", "LATE_RUNS", "PAUSE_EXPIRATIONS", "REPOSSESSOR", "TRIGGERS",
               "CLEANUP_RECONCILER")}}
    bad = subprocess.run([str(BIN / "medpipe"), "schedule", "--cron", "every monday", "--params",
                          str(project / "params.yaml")], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: --cron: not a valid cron schedule" in bad.stderr
    server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path)
    served = None
    try:
        _wait(lambda: _api(f"{api}/health") is True, 180, "prefect server", server)
        served = _start([str(BIN / "medpipe"), "schedule", "--cron", "0 2 * * 1", "--params",
                         str(project / "params.yaml")], env, project)
        deployment = _wait(lambda: _api(f"{api}/deployments/filter", {}), 180, "deployment", server, served)[0]
        assert deployment["name"] == "medpipe-retraining"
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * 1"]
        assert deployment["parameters"]["params_file"] == str(project / "params.yaml")
        run = _wait(lambda: _api(f"{api}/deployments/{deployment['id']}/create_flow_run", {}), 60,
                    "create a run", server, served)  # what the schedule does on Mondays
        state = _wait(lambda: _api(f"{api}/flow_runs/{run['id']}")["state"]["type"] in ("COMPLETED", "FAILED",
                                                                                      "CRASHED") and
                      _api(f"{api}/flow_runs/{run['id']}")["state"]["type"], 600, "flow run", server, served)
        if state != "COMPLETED":
            os.killpg(served.pid, signal.SIGTERM)
            message = _api(f"{api}/flow_runs/{run['id']}")["state"]["message"]
            pytest.fail(f"{message}\n{served.stderr.read()[-5000:]}")
        assert json.loads((project / "outputs" / "register" / "model_version.json").read_text())["version"] == 1
    finally:
        for process in (served, server):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=60)
