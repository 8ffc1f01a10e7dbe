"""Telemetry of Prefect, MLflow, DVC and GX is off in the project's own configuration."""

import configparser
import os
import subprocess
import sys
import tomllib

from tests.helpers import REPO

TELEMETRY = (
    "MLFLOW_DISABLE_TELEMETRY",
    "DVC_NO_ANALYTICS",
    "GX_ANALYTICS_ENABLED",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "DO_NOT_TRACK",
)


def _child(code: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO).stdout


def test_the_command_and_the_flows_switch_telemetry_off_without_overriding_the_user():
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY}
    show = f"print(*(os.environ[k] for k in {TELEMETRY!r}))"
    for entry in ("cli", "flows"):  # `medpipe ...`; Prefect workers and deployments
        assert _child(f"import os, {entry}; {show}", env).split() == ["true", "1", "false", "false", "true"], entry
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "123"
    code = "import os, cli; print(os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])"
    assert _child(code, env).strip() == "123"


def test_importing_the_library_changes_no_environment():
    from pipeline._env import OFFLINE_DEFAULTS

    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_DEFAULTS}
    code = (
        "import os; before = dict(os.environ); "
        "import pipeline, pipeline.steps, pipeline.preprocess, pipeline.autoparams; "
        "print(*sorted(k for k, v in os.environ.items() if before.get(k) != v))"
    )
    assert _child(code, env).split() == ["LD_LIBRARY_PATH"]  # OpenCV's own loader sets it; medpipe sets nothing


def test_project_config_files_switch_analytics_off():
    dvc = configparser.ConfigParser()
    dvc.read(REPO / ".dvc" / "config")
    assert dvc["core"]["analytics"] == "false"
    assert dvc["core"]["check_update"] == "false"
    prefect = tomllib.loads((REPO / "prefect.toml").read_text())
    assert prefect["server"]["analytics_enabled"] is False
    makefile = (REPO / "Makefile").read_text()
    for line in (
        "MLFLOW_DISABLE_TELEMETRY := true",
        "DVC_NO_ANALYTICS := 1",
        "GX_ANALYTICS_ENABLED := false",
        "PREFECT_SERVER_ANALYTICS_ENABLED := false",
    ):
        assert f"export {line}" in makefile


def test_prefect_reads_the_project_setting():
    code = (
        "from prefect.settings import get_current_settings as s; "
        "print(s().server.analytics_enabled, s().server.ephemeral.startup_timeout_seconds)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["False", "90"], out.stderr
