"""Rebuild a registered model from its lineage and check it is the same model.

Version N's tags name the git commit, the data hash and (via its run) the exact params. A temporary
workspace gets that commit's code (`git archive`), that data version (the commit's `data.dvc`, checked
out from this project's DVC cache or pulled from its remote), the params and the pseudonym salt; the
steps up to evaluation run there with that code, into a throw-away MLflow store. Then weights hash
and metrics are compared with the original's.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, cast

import yaml

from pipeline.config import Params, Workspace
from pipeline.errors import MedpipeError

COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a full SHA-1 or SHA-256 object name, nothing else


log = logging.getLogger(__name__)


@dataclass
class Reproduction:
    """What was rebuilt and how it compares with the original."""

    version: int
    commit: str
    same_weights: bool
    differences: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Same weights hash and every final metric equal."""
        return self.same_weights and not self.differences


def _run(args: list[str], cwd: Path, env: dict | None = None, what: str = "") -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise MedpipeError(what or " ".join(args[:3]), f"failed: {tail[0]}")
    return done.stdout


class Original(NamedTuple):
    """A registered version as it was made: its tags, its run's final metrics and the params it was trained with."""

    tags: dict
    metrics: dict
    params: dict


class Rebuilt(NamedTuple):
    """What a rebuild made: the weights hash and the final metrics."""

    weights_sha256: str
    metrics: dict[str, float]


def original(params: Params, ws: Workspace, version: int) -> Original:
    """Version N's tags, its run's final metrics, and the params it was trained with.

    Args:
        params: This project's params (where the registry is, the model name).
        ws: This project's workspace.
        version: The registered version number.

    Returns:
        The version's tags, its run's `test_*`/`val_*` metrics and its logged params.yaml.

    Raises:
        MedpipeError: no such version, or its run has no params.yaml artifact.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.registry import setup_tracking

    setup_tracking(params.register_, ws.base)
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version(params.register_.model_name, str(version))
    except MlflowException:
        raise MedpipeError(f"version {version}", "no such registered model version") from None
    run = client.get_run(cast(str, mv.run_id))  # a registered medpipe version always comes from a run
    try:
        logged = yaml.safe_load(
            Path(mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/params.yaml")).read_text()
        )
    except (MlflowException, OSError):
        raise MedpipeError(
            f"version {version}",
            "its run has no params.yaml artifact (trained before medpipe logged it): it cannot be rebuilt",
        ) from None
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith(("test_", "val_"))}
    return Original(mv.tags, metrics, logged)


def checkout(base: Path, commit: str, data_md5: str, into: Path, data_root: str) -> list[str]:
    """That commit's files into `into`, and its data version (DVC cache of `base`, else its remote).

    Args:
        base: This project's folder (git repository, DVC cache and remotes).
        commit: The full commit id recorded on the version.
        data_md5: The data hash recorded on the version.
        into: The empty folder to rebuild in.
        data_root: The data folder's name in that commit (its `<data_root>.dvc` pointer).

    Returns:
        Notes for the report (e.g. that the data was pulled from the remote).

    Raises:
        MedpipeError: no or no full commit id, a commit not in the repository, a missing or different data
            pointer, or a DVC command that failed.
    """
    notes = []
    if commit in ("", "unknown"):
        raise MedpipeError("lineage", "the version has no git commit recorded: it cannot be rebuilt")
    if not COMMIT_ID.fullmatch(commit):  # a tag is data: never let it reach git as an option or a revision expression
        raise MedpipeError("lineage", f"the recorded git commit {commit[:80]!r} is not a full commit id")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "--"], cwd=base, capture_output=True, timeout=600
    )
    if archive.returncode != 0:
        raise MedpipeError(f"commit {commit[:12]}", "not in this repository (fetch it first)")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=600)
    pointer = into / f"{data_root}.dvc"
    if not pointer.is_file():
        raise MedpipeError(pointer.name, f"commit {commit[:12]} has no DVC pointer for its data: cannot restore it")
    if yaml.safe_load(pointer.read_text())["outs"][0].get("md5") != data_md5:
        raise MedpipeError(pointer.name, f"commit {commit[:12]} points at other data than version's {data_md5}")
    dvc = [sys.executable, "-m", "dvc"]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(into / ".dvc" / "tmp" / "site")}
    _run([*dvc, "config", "--local", "core.no_scm", "true"], into, env, "dvc config")  # an archive, not a clone
    _run([*dvc, "cache", "dir", "--local", str(base / ".dvc" / "cache")], into, env, "dvc cache dir")
    for name, url in _remotes(base).items():  # this project's remotes, relative urls made absolute
        _run([*dvc, "remote", "modify", "--local", name, "url", url], into, env, "dvc remote modify")
    try:
        _run([*dvc, "checkout", pointer.name], into, env, "dvc checkout")
    except MedpipeError:
        _run([*dvc, "pull", pointer.name], into, env, f"dvc pull {pointer.name}")
        notes.append(f"data {data_md5} pulled from the DVC remote")
    return notes


def _remotes(base: Path) -> dict[str, str]:
    """DVC remotes of the project at `base` with their resolved urls."""
    from dvc.repo import Repo

    with Repo(str(base)) as repo:
        return {name: str(conf["url"]) for name, conf in repo.config.get("remote", {}).items()}


def rebuild(into: Path, logged: dict, base: Path) -> Rebuilt:
    """Run the steps up to evaluation in `into` with the code there (not the installed one) and a
    throw-away MLflow store; return the weights hash and the final metrics.

    Args:
        into: The checked-out workspace.
        logged: The original's params (its register section is pointed at a local store).
        base: This project's folder (its pseudonym salt is copied).

    Returns:
        The rebuilt weights' sha256 and outputs/metrics.json.

    Raises:
        MedpipeError: a step failed.
    """
    raw = {
        **logged,
        "register": {
            **logged["register"],
            "tracking_uri": "sqlite:///mlflow/mlflow.db",
            "artifact_root": "mlflow/artifacts",
        },
    }
    (into / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if (base / ".medpipe-salt").is_file():  # same pseudonyms, so the same patient-grouped split
        shutil.copy2(base / ".medpipe-salt", into / ".medpipe-salt")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # the backend that trained it (versions from before train.backend: TensorFlow), whatever this shell says
    backend = logged.get("train", {}).get("backend", "tensorflow")
    env["KERAS_BACKEND"] = "tensorflow" if backend == "auto" else backend
    env["PYTHONPATH"] = str(into)
    command = [sys.executable, "-m", "cli" if (into / "cli" / "__main__.py").is_file() else "pipeline.cli"]
    steps = training_steps(into / "dvc.yaml")
    for i, step in enumerate(steps, 1):
        started = time.monotonic()
        _run([*command, "stage", step, "--params", "params.yaml"], into, env, f"rebuild step {step}")
        log.info("rebuilt step %d/%d: %s (%.0f s)", i, len(steps), step, time.monotonic() - started)
    trained = json.loads((into / "outputs" / "train" / "run.json").read_text())
    return Rebuilt(trained["weights_sha256"], json.loads((into / "outputs" / "metrics.json").read_text()))


def training_steps(dvc_file: Path) -> list[str]:
    """The stages of a commit's dvc.yaml up to evaluation, in order: the steps its code declares.

    Args:
        dvc_file: The commit's dvc.yaml.

    Returns:
        The stage names, up to and including `evaluate`.
    """
    names = list(yaml.safe_load(dvc_file.read_text())["stages"])
    return names[: names.index("evaluate") + 1]


def compare(version: int, tags: dict, metrics: dict, sha: str, rebuilt: dict) -> Reproduction:
    """Weights hash and every final metric both sides have, compared exactly.

    Args:
        version: The version number.
        tags: The original's tags (git commit, weights hash).
        metrics: The original's final metrics.
        sha: The rebuilt weights' sha256.
        rebuilt: The rebuilt final metrics.

    Returns:
        The comparison; `differences` maps each differing metric to (original, rebuilt).
    """
    diffs = {k: (v, float(rebuilt[k])) for k, v in sorted(metrics.items()) if k in rebuilt and float(rebuilt[k]) != v}
    return Reproduction(version, tags.get("medpipe.git_commit", ""), sha == tags.get("medpipe.weights_sha256"), diffs)


def reproduce(params: Params, ws: Workspace, version: int, keep: Path | None = None) -> Reproduction:
    """Rebuild version `version` from its lineage in a temporary workspace and compare it with the original.

    Args:
        params: This project's params.
        ws: This project's workspace.
        version: The registered version number.
        keep: A folder to rebuild in and keep; None: a temporary one, removed afterwards.

    Returns:
        The comparison, with notes.

    Raises:
        MedpipeError: the version cannot be rebuilt (see original, checkout, rebuild).
    """
    tags, metrics, logged = original(params, ws, version)
    log.info("rebuilding version %s from commit %s and data %s", version, tags.get("medpipe.git_commit", "?")[:12],
             tags.get("medpipe.data_md5", "?")[:8])  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix=f"medpipe-reproduce-v{version}-")) if keep is None else keep
    try:
        notes = checkout(
            ws.base,
            tags.get("medpipe.git_commit", ""),
            tags.get("medpipe.data_md5", ""),
            folder,
            str(logged["data"]["root"]),
        )
        if tags.get("medpipe.git_dirty") == "true":
            notes.append("the original ran with uncommitted changes: the commit's code may differ from it")
        sha, rebuilt = rebuild(folder, logged, ws.base)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    result = compare(version, tags, metrics, sha, rebuilt)
    result.notes = notes
    return result
