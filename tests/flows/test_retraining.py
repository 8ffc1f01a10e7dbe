"""Retraining as users run it, in a real git + DVC project: two runs at once, the unchanged-data
skip, and a version rebuilt from its lineage (`medpipe reproduce`)."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.flows.test_dvc_lineage import BIN, NETGUARD_LOG, tiny_project
from tests.helpers import assert_offline, guarded_env

pytestmark = pytest.mark.slow


def _medpipe(project: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "medpipe"), *args, "--params", str(project / "params.yaml")], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_runs_skip_and_reproduce(prefect_harness, tmp_path, tiny_data):
    import mlflow
    from prefect.settings import get_current_settings

    tiny_project(tmp_path, tiny_data)
    env = guarded_env({**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                       "PREFECT_API_URL": str(get_current_settings().api.url)},  # both runs report to the test server
                      tmp_path / "netguard.log")

    runs = [_medpipe(tmp_path, "run", "--force", env=env) for _ in range(2)]  # two retrainings at once
    outputs = [run.communicate(timeout=900) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert any("waiting for it to finish" in out + err for out, err in outputs)  # the second waited its turn
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {int(v.version): v for v in client.search_model_versions("name='medpipe-classifier'")}
    assert sorted(versions) == [1, 2]  # none lost, none half-registered:
    for v in versions.values():
        assert {"medpipe.weights_sha256", "medpipe.data_md5", "medpipe.classes", "medpipe.promotion"} <= set(v.tags)
        assert client.get_run(v.run_id).info.status == "FINISHED"
    assert int(client.get_registered_model("medpipe-classifier").aliases["champion"]) in (1, 2)
    assert versions[1].tags["medpipe.weights_sha256"] == versions[2].tags["medpipe.weights_sha256"]

    skip = _medpipe(tmp_path, "run", env=env)  # nothing changed since version 2
    out, err = skip.communicate(timeout=900)
    assert skip.returncode == 0 and "up to date" in out and "version 2" in out, out + err
    assert len(client.search_model_versions("name='medpipe-classifier'")) == 2

    rebuilt = _medpipe(tmp_path, "reproduce", "--version", "1", env=env)
    out, err = rebuilt.communicate(timeout=900)
    assert rebuilt.returncode == 0, out + err
    assert "weights identical, all metrics identical" in out
    assert_offline(tmp_path / "netguard.log")
    assert_offline(NETGUARD_LOG)
