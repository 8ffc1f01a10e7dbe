"""Retraining as users run it, in a real git + DVC project: two runs at once, lineage tags and DVC
status after them, the unchanged-data skip, a version rebuilt from its lineage (`medpipe reproduce`),
and the same steps run as DVC stages (`dvc repro`). One project, trained once for the module."""

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.flows.test_dvc_lineage import BIN, NETGUARD_LOG, sh, tiny_project
from tests.helpers import assert_offline, guarded_env

pytestmark = pytest.mark.slow


def _medpipe(project: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "medpipe"), *args, "--params", str(project / "params.yaml")],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Retrained(NamedTuple):
    """A committed tiny project after two `medpipe run --force` at once."""

    project: Path
    env: dict
    outputs: list[tuple[str, str]]
    returncodes: list[int]
    versions: dict  # version number -> ModelVersion, right after the two runs


def _client(project: Path):
    import mlflow

    uri = f"sqlite:///{project}/mlflow/mlflow.db"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def retrained(prefect_harness, tmp_path_factory, tiny_data) -> Retrained:
    from prefect.settings import get_current_settings

    project = tmp_path_factory.mktemp("retrained")
    tiny_project(project, tiny_data)
    env = guarded_env(
        {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_API_URL": str(get_current_settings().api.url),
        },  # both runs report to the test server
        project / "netguard.log",
    )
    runs = [_medpipe(project, "run", "--force", env=env) for _ in range(2)]  # two retrainings at once
    outputs = [run.communicate(timeout=900) for run in runs]
    versions = {int(v.version): v for v in _client(project).search_model_versions("name='medpipe-classifier'")}
    yield Retrained(project, env, outputs, [run.returncode for run in runs], versions)
    assert_offline(project / "netguard.log")
    assert_offline(NETGUARD_LOG)


def test_two_runs_at_once_register_one_after_the_other(retrained):
    assert retrained.returncodes == [0, 0], retrained.outputs
    assert any("waiting for it to finish" in out + err for out, err in retrained.outputs)  # the second waited
    client, versions = _client(retrained.project), retrained.versions
    assert sorted(versions) == [1, 2]  # none lost, none half-registered:
    for v in versions.values():
        assert {"medpipe.weights_sha256", "medpipe.data_md5", "medpipe.classes", "medpipe.promotion"} <= set(v.tags)
        assert client.get_run(v.run_id).info.status == "FINISHED"
    assert int(client.get_registered_model("medpipe-classifier").aliases["champion"]) in (1, 2)
    assert versions[1].tags["medpipe.weights_sha256"] == versions[2].tags["medpipe.weights_sha256"]


def test_versions_name_the_commit_and_the_dvc_data_version_and_dvc_is_up_to_date(retrained):
    project = retrained.project
    assert "up to date" in sh(project, str(BIN / "dvc"), "status")
    tags = retrained.versions[1].tags
    assert tags["medpipe.git_commit"] == sh(project, "git", "rev-parse", "HEAD").strip()
    assert tags["medpipe.git_dirty"] == "false"
    assert tags["medpipe.data_md5"] == yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]


def test_an_unchanged_project_trains_nothing(retrained):
    newest = max(int(v.version) for v in _client(retrained.project).search_model_versions("name='medpipe-classifier'"))
    skip = _medpipe(retrained.project, "run", env=retrained.env)
    out, err = skip.communicate(timeout=900)
    assert skip.returncode == 0, out + err
    assert "up to date" in out, out + err
    assert f"version {newest}" in out, out + err
    assert len(_client(retrained.project).search_model_versions("name='medpipe-classifier'")) == newest


def test_reproduce_rebuilds_a_version_from_its_lineage(retrained):
    rebuilt = _medpipe(retrained.project, "reproduce", "--version", "1", env=retrained.env)
    out, err = rebuilt.communicate(timeout=900)
    assert rebuilt.returncode == 0, out + err
    assert "weights identical, all metrics identical" in out
    assert "rebuilt step 1/5: validate" in out  # progress while it takes minutes
    assert "rebuilt step 5/5: evaluate" in out


def test_dvc_repro_runs_the_same_steps_as_stages(retrained):
    project, client = retrained.project, _client(retrained.project)
    before = len(client.search_model_versions("name='medpipe-classifier'"))
    out = sh(project, str(BIN / "dvc"), "repro", "--force")
    for stage in ("validate", "preprocess", "balance", "train", "evaluate", "register", "promote", "card"):
        assert f"Running stage '{stage}'" in out
    made = client.get_model_version("medpipe-classifier", str(before + 1)).tags
    assert made["medpipe.data_md5"] == retrained.versions[1].tags["medpipe.data_md5"]
    assert made["medpipe.weights_sha256"] == retrained.versions[1].tags["medpipe.weights_sha256"]  # as `medpipe run`
    assert "up to date" in sh(project, str(BIN / "dvc"), "status")
