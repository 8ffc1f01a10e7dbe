"""Real DVC in a temporary git repo: data.dvc, data versions pushed and pulled (`dvc status` after a flow
run and `dvc repro`: tests/flows/test_retraining.py)."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, assert_offline, guarded_env, write_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
NETGUARD_LOG = Path(tempfile.mkdtemp()) / "netguard.log"  # every child: DVC, git hooks aside, medpipe
ENV = guarded_env({**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}, NETGUARD_LOG)


@pytest.fixture(autouse=True)
def _children_offline():
    yield
    assert_offline(NETGUARD_LOG)


def sh(cwd: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def init_repo(root: Path) -> None:
    """git + DVC with the project's offline settings, as in the repo's .dvc/config."""
    sh(root, "git", "init", "-q")
    sh(root, str(BIN / "dvc"), "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")


def tiny_project(root: Path, tiny_data: Path) -> None:
    """A committed git + DVC project: the pipeline code, dvc.yaml, the tiny data (dvc add) and params."""
    init_repo(root)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for package in ("pipeline", "cli"):  # the code `medpipe reproduce` rebuilds with (git archive of the commit)
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tiny_data, root / "data")
    write_params(root)
    sh(root, str(BIN / "dvc"), "add", "-q", "data")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "tiny project")


def test_committed_data_dvc_matches_the_built_in_data_set(tmp_path):
    from pipeline.data import synthesize

    init_repo(tmp_path)
    synthesize(tmp_path / "data")  # the defaults `make run` uses
    sh(tmp_path, str(BIN / "dvc"), "add", "-q", "data")
    fresh = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    assert (fresh["md5"], fresh["nfiles"]) == (committed["md5"], committed["nfiles"])
    assert "analytics = false" in (tmp_path / ".dvc" / "config").read_text()


def test_data_add_push_and_pull_through_the_default_local_remote(tmp_path, tiny_data):
    init_repo(tmp_path)
    assert "local" in sh(tmp_path, str(BIN / "dvc"), "remote", "list")
    shutil.copytree(tiny_data, tmp_path / "data")
    added = subprocess.run(
        [str(BIN / "medpipe"), "data", "add", "data"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert added.returncode == 0, added.stderr
    assert "data.dvc" in added.stdout, added.stderr
    sh(tmp_path, "git", "add", "-A")
    sh(tmp_path, "git", "commit", "-qm", "data v1")
    sh(tmp_path, str(BIN / "dvc"), "push", "-q")
    assert (tmp_path / ".dvc" / "storage").is_dir()

    original = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    sh(tmp_path, str(BIN / "dvc"), "pull", "-q")
    restored = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    assert restored == original
    assert "up to date" in sh(tmp_path, str(BIN / "dvc"), "status")

    (tmp_path / "data" / "manifest.csv").write_text("path,label\n")  # a new data version
    assert (
        subprocess.run(
            [str(BIN / "medpipe"), "data", "add", "data"], cwd=tmp_path, env=ENV, capture_output=True, timeout=300
        ).returncode
        == 0
    )
    new = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]
    assert new != yaml.safe_load(sh(tmp_path, "git", "show", "HEAD:data.dvc"))["outs"][0]["md5"]


def test_data_remote_add_push_and_pull(tmp_path, tiny_data):
    """`medpipe data remote add` makes a team remote; data versions go there and come back."""
    init_repo(tmp_path)
    shutil.copytree(tiny_data, tmp_path / "data")
    sh(tmp_path, str(BIN / "dvc"), "add", "-q", "data")
    store = tmp_path.parent / f"{tmp_path.name}-team-store"
    out = sh(tmp_path, str(BIN / "medpipe"), "data", "remote", "add", "team", str(store))
    assert "(default)" in out
    assert "team" in sh(tmp_path, str(BIN / "medpipe"), "data", "remote", "list")
    sh(tmp_path, str(BIN / "dvc"), "push", "-q")
    assert any(store.rglob("*"))
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    sh(tmp_path, str(BIN / "dvc"), "pull", "-q")
    assert sorted(p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*.png")) == sorted(
        p.relative_to(tiny_data) for p in tiny_data.rglob("*.png")
    )


def test_label_import_leaves_a_new_data_version(tmp_path, tiny_data):
    import pandas as pd

    init_repo(tmp_path)
    shutil.copytree(tiny_data, tmp_path / "data")
    write_params(tmp_path)
    manifest = pd.read_csv(tmp_path / "data/manifest.csv", dtype=str, keep_default_na=False)
    truth = manifest.loc[:1, ["path", "label"]].copy()
    manifest.loc[:1, "label"] = ""  # two unlabelled images
    manifest.to_csv(tmp_path / "data/manifest.csv", index=False)
    sh(tmp_path, str(BIN / "dvc"), "add", "-q", "data")
    sh(tmp_path, "git", "add", "-A")
    sh(tmp_path, "git", "commit", "-qm", "data with an unlabelled pool")
    truth.to_csv(tmp_path / "reviewed.csv", index=False)
    said = sh(tmp_path, str(BIN / "medpipe"), "label", "import", "reviewed.csv", "--reviewer", "dr a")  # exit 0
    assert "2 image(s) labelled" in said and "updated data.dvc" in said
    new = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]
    assert new != yaml.safe_load(sh(tmp_path, "git", "show", "HEAD:data.dvc"))["outs"][0]["md5"]
    assert "up to date" in sh(tmp_path, str(BIN / "dvc"), "status", "data.dvc")
    merged = pd.read_csv(tmp_path / "data/manifest.csv", dtype=str, keep_default_na=False)
    assert merged.loc[:1, "label"].tolist() == truth["label"].tolist()
    assert set(merged.loc[:1, "label_source"]) == {"expert"} and set(merged.loc[2:, "label_source"]) == {"data"}
