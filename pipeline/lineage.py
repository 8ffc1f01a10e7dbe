"""Lineage: which data, code and params made a model (tags on MLflow runs and versions)."""

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from pipeline.config import Params, Workspace


def dvc_pointer(data_root: Path) -> dict | None:
    """The `outs[0]` entry of `<data_root>.dvc` (e.g. data.dvc beside data/), if there is one.

    Args:
        data_root: The data folder.

    Returns:
        The entry (md5, nfiles, path, ...), or None without a pointer file or when it tracks another path.
    """
    pointer = data_root.with_name(data_root.name + ".dvc")
    if not pointer.is_file():
        return None
    outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or [{}]
    return outs[0] if outs[0].get("path") == data_root.name else None


class ContentHash(NamedTuple):
    """A data folder's md5 (over relative paths and bytes) and how many files it holds."""

    md5: str
    files: int


def content_hash(data_root: Path) -> ContentHash:
    """md5 over every file's relative path and bytes, for data not tracked by DVC.

    Args:
        data_root: The data folder.

    Returns:
        The hex md5 and the number of files hashed.
    """
    digest, n = hashlib.md5(), 0
    for path in sorted(p for p in data_root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(data_root).as_posix().encode() + b"\0")
        digest.update(hashlib.md5(path.read_bytes()).digest())
        n += 1
    return ContentHash(digest.hexdigest(), n)


def data_lineage(data_root: Path) -> dict[str, str]:
    """Data hash and file count: from the DVC pointer when present, else computed here.

    Args:
        data_root: The data folder.

    Returns:
        Tags `medpipe.data_md5`, `medpipe.data_files` and `medpipe.data_source` (`dvc` or `computed`).
    """
    pointer = dvc_pointer(data_root)
    if pointer and "md5" in pointer:
        return {
            "medpipe.data_md5": pointer["md5"],
            "medpipe.data_files": str(pointer.get("nfiles", "")),
            "medpipe.data_source": "dvc",
        }
    md5, n = content_hash(data_root)
    return {"medpipe.data_md5": md5, "medpipe.data_files": str(n), "medpipe.data_source": "computed"}


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_lineage(cwd: Path) -> dict[str, str]:
    """Commit and dirty flag (tracked files changed) of the code that runs.

    dvc.lock does not count: it records step outputs (each run rewrites it), not inputs.

    Args:
        cwd: A folder in the git work tree.

    Returns:
        Tags `medpipe.git_commit` and `medpipe.git_dirty` (`true`/`false`; `unknown` when git cannot tell).
    """
    commit = _git(["rev-parse", "HEAD"], cwd)
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock"], cwd)
    return {
        "medpipe.git_commit": commit or "unknown",
        "medpipe.git_dirty": "unknown" if status is None else str(bool(status)).lower(),
    }


def lineage_tags(params: Params, ws: Workspace) -> dict[str, str]:
    """All lineage tags known before training.

    Args:
        params: The run's params (hashed).
        ws: The run's workspace (data root and code folder).

    Returns:
        The data, git and `medpipe.params_md5` tags, `medpipe.label_sources` when recorded, and
        `medpipe.init_weights` when model.weights is set.
    """
    return {
        **data_lineage(ws.data_root),
        **git_lineage(ws.base),
        "medpipe.params_md5": params.md5(),
        **label_sources(ws.data_root),
        **init_weights(params, ws.base),
    }


def init_weights(params: Params, base: Path) -> dict[str, str]:
    """The file model.weights names, by content: its sha256 and, for a medpipe encoder, the MLflow run that
    pre-trained it (the params name only its path).

    Args:
        params: The run's params.
        base: The project folder.

    Returns:
        `{"medpipe.init_weights": "encoder.npz sha256:3f2a... (pre-trained in run 5ccc74ed...)"}`, or {} when
        model.weights is not set.

    Raises:
        ConfigError: The file does not exist, or is an .npz that is not an encoder file.
    """
    path = params.model.weights_path(base)
    if path is None:
        return {}
    with path.open("rb") as f:
        tag = f"{path.name} sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"
    if path.suffix == ".npz":
        from pipeline.weights import read_about

        source = read_about(path).get("run_id")
        tag += f" (pre-trained in run {source})" if source else ""
    return {"medpipe.init_weights": tag}


def label_sources(data_root: Path) -> dict[str, str]:
    """Where the labels came from, when the manifest records it (`medpipe label import` adds label_source).

    Args:
        data_root: The data root.

    Returns:
        `{"medpipe.label_sources": "data=196,expert=4"}` (labelled images per source, sorted; `unknown` for
        an empty source), or {} when manifest.csv has no label_source column.
    """
    import pandas as pd

    from pipeline.data import MANIFEST

    path = data_root / MANIFEST
    if not path.is_file():
        return {}
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda c: c in ("label", "label_source"))
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, ValueError):
        return {}  # validation reports an unreadable manifest
    if "label_source" not in rows.columns or "label" not in rows.columns:
        return {}
    counts = rows.loc[rows["label"] != "", "label_source"].replace("", "unknown").value_counts().sort_index()
    return {"medpipe.label_sources": ",".join(f"{k}={v}" for k, v in counts.items())}


LINEAGE_KEYS = (
    "medpipe.data_md5",
    "medpipe.params_md5",
    "medpipe.git_commit",
    "medpipe.git_dirty",
    "medpipe.init_weights",  # only when model.weights is set: absent on both sides otherwise
)


@dataclass(frozen=True)
class SameLineage:
    """A registered version made from exactly this data, these params and this code."""

    version: int
    gated: bool  # False: the gate never decided on it (a run died after registering): finish it


def up_to_date(params: Params, ws: Workspace) -> SameLineage | None:
    """The newest complete registered version made from exactly this data, these params (and the same
    model.weights file, by content) and this committed code (clean tree), if there is one: retraining it
    would only make the same model again.

    Args:
        params: The run's params.
        ws: The run's workspace (its data root and code).

    Returns:
        The version and whether the gate has decided on it, or None when there is none.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.registry import PENDING, is_complete, setup_tracking

    tags = lineage_tags(params, ws)
    if tags["medpipe.git_dirty"] != "false":
        return None  # uncommitted (or unknown) code: cannot tell it is unchanged
    setup_tracking(params.register_, ws.base)
    try:
        versions = mlflow.MlflowClient().search_model_versions(f"name='{params.register_.model_name}'")
    except MlflowException:
        return None
    same = [v for v in versions if is_complete(v) and all(v.tags.get(k) == tags.get(k) for k in LINEAGE_KEYS)]
    if not same:
        return None
    newest = max(same, key=lambda v: int(v.version))
    return SameLineage(int(newest.version), newest.tags.get("medpipe.promotion") != PENDING)


def weights_sha256(weights: list[np.ndarray]) -> str:
    """sha256 over a model's weight arrays (shape, dtype and bytes), independent of file format.

    Args:
        weights: The model's weight arrays, in order.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    for w in weights:
        digest.update(f"{w.shape}{w.dtype}".encode())
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def record_dvc_outputs(params: Params, ws: Workspace, params_file: Path, overrides: dict[str, str] | None) -> str:
    """Record a flow run's outputs in dvc.lock (`dvc commit`), so `dvc status` agrees with them.

    Only when the run used exactly what the DVC stages use: the project's params.yaml without
    overrides and the default data root. Returns what was done, for the log.

    Args:
        params: The run's params.
        ws: The run's workspace.
        params_file: The params file the run read.
        overrides: The run's `--set` overrides (any: not recorded).

    Returns:
        One line saying whether dvc.lock was updated, and why not.
    """
    import os
    import sys

    default_root = (ws.base / params.data.root).resolve()
    if overrides or params_file.resolve() != ws.base / "params.yaml" or ws.data_root != default_root:
        return "dvc.lock not updated: run used other data or parameters than dvc.yaml's stages"
    if not (ws.base / "dvc.yaml").is_file() or not (ws.base / ".dvc").is_dir():
        return "dvc.lock not updated: no DVC project here"
    env = {
        **os.environ,
        "DVC_SITE_CACHE_DIR": os.environ.get("DVC_SITE_CACHE_DIR", str(ws.base / ".dvc" / "tmp" / "site-cache")),
    }
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", "--quiet"],
        cwd=ws.base,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        return f"dvc.lock not updated: dvc commit failed: {done.stderr.strip().splitlines()[-1:]}"
    return "dvc.lock records this run's outputs (dvc status: up to date)"
