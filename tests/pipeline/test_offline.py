"""Telemetry of Prefect, MLflow, DVC and GX is off in the project's own configuration."""

import configparser
import os
import subprocess
import sys
import tomllib

from tests.helpers import REPO


def test_importing_medpipe_switches_telemetry_off_without_overriding_the_user():
    code = ("import os, pipeline; print(os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['DVC_NO_ANALYTICS'], "
            "os.environ['GX_ANALYTICS_ENABLED'], os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'], "
            "os.environ['DO_NOT_TRACK'])")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS",
                                                            "GX_ANALYTICS_ENABLED", "DO_NOT_TRACK",
                                                            "PREFECT_SERVER_ANALYTICS_ENABLED")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["true", "1", "false", "false", "true"]
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "123"
    code = "import os, pipeline; print(os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "123"


def test_project_config_files_switch_analytics_off():
    dvc = configparser.ConfigParser()
    dvc.read(REPO / ".dvc" / "config")
    assert dvc["core"]["analytics"] == "false" and dvc["core"]["check_update"] == "false"
    prefect = tomllib.loads((REPO / "prefect.toml").read_text())
    assert prefect["server"]["analytics_enabled"] is False
    makefile = (REPO / "Makefile").read_text()
    for line in ("MLFLOW_DISABLE_TELEMETRY := true", "DVC_NO_ANALYTICS := 1", "GX_ANALYTICS_ENABLED := false",
                 "PREFECT_SERVER_ANALYTICS_ENABLED := false"):
        assert f"export {line}" in makefile


def test_prefect_reads_the_project_setting():
    code = ("from prefect.settings import get_current_settings as s; "
            "print(s().server.analytics_enabled, s().server.ephemeral.startup_timeout_seconds)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["False", "90"], out.stderr
