"""Manifest scan: one row of facts per image, parallel over cores, incremental across runs."""

import hashlib
import os
import secrets
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import pandas as pd

from pipeline.imageio import ImageError, read_image, to_gray

SALT_FILE = ".medpipe-salt"
SALT_ENV = "MEDPIPE_PSEUDONYM_SALT"
PARALLEL_FROM = 400  # below this many files, worker start-up costs more than it saves


@dataclass(frozen=True)
class ScanRow:
    """What one file is: identity, geometry, intensity, sharpness, and whether it can be used."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    channels: int
    bit_depth: int
    mean: float
    std: float
    blur: float
    readable: bool
    error: str
    patient_key: str


COLUMNS = list(ScanRow.__dataclass_fields__)
DTYPES = {name: {str: str, int: "int64", float: "float64", bool: bool}[f.type]
          for name, f in ScanRow.__dataclass_fields__.items()}


def data_salt(project: Path, create: bool) -> bytes:
    """The pseudonymisation salt: $MEDPIPE_PSEUDONYM_SALT, else `<project>/.medpipe-salt` (made on first use).

    It stays out of git and out of the data folder (which stays untouched); it makes the
    pseudonyms in outputs, logs and MLflow irreversible for anyone without it. Teams that train
    in several places share it through the environment variable.
    """
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode()
    path = project / SALT_FILE
    if not path.is_file() and create:
        path.write_text(secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode() if path.is_file() else b""


def inside_root(root: Path, rel: str) -> bool:
    """Whether `rel` stays inside `root` once resolved (no `../` escapes, no absolute paths)."""
    try:
        (root / rel).resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def scan_file(root: Path, rel: str, salt: bytes) -> ScanRow:
    """Scan one image; an unusable file gives a row with readable=False and the reason."""
    path = root / rel
    if not inside_root(root, rel):
        return ScanRow(rel, 0, 0, "", 0, 0, 0, 0, 0.0, 0.0, 0.0, False, "path outside the data root", "")
    stat = path.stat() if path.is_file() else None
    size, mtime = (stat.st_size, stat.st_mtime_ns) if stat else (0, 0)
    sha = hashlib.sha256(path.read_bytes()).hexdigest() if stat else ""
    try:
        image = read_image(path, salt)
    except ImageError as err:
        return ScanRow(rel, size, mtime, sha, 0, 0, 0, 0, 0.0, 0.0, 0.0, False, err.reason, "")
    gray = to_gray(image.pixels) * 255.0
    blur = float(cv2.Laplacian(gray, cv2.CV_32F).var())
    h, w = image.pixels.shape[:2]
    return ScanRow(rel, size, mtime, sha, w, h, image.channels, image.bit_depth, float(gray.mean()),
                   float(gray.std()), blur, True, "", image.patient_key or "")


def _scan_chunk(args: tuple[Path, list[str], bytes]) -> list[ScanRow]:
    root, rels, salt = args
    cv2.setNumThreads(1)  # one process per core already
    return [scan_file(root, rel, salt) for rel in rels]


def _unchanged(cached: pd.DataFrame, root: Path, rels: list[str]) -> pd.DataFrame:
    """Cached rows whose file still has the same size and modification time."""
    keep = []
    for row in cached.itertuples(index=False):
        path = root / row.path
        if row.path in rels and path.is_file():
            stat = path.stat()
            if stat.st_size == row.size and stat.st_mtime_ns == row.mtime_ns:
                keep.append(row)
    return pd.DataFrame(keep, columns=COLUMNS)


def _run(root: Path, rels: list[str], salt: bytes, workers: int, progress: bool) -> list[ScanRow]:
    from rich.progress import Progress

    chunks = [rels[i:i + 64] for i in range(0, len(rels), 64)]
    rows: list[ScanRow] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("scanning images", total=len(rels))
        if workers <= 1 or len(rels) < PARALLEL_FROM:
            results = map(_scan_chunk, [(root, c, salt) for c in chunks])
            for chunk in results:
                rows += chunk
                bar.advance(task, len(chunk))
            return rows
        # fork: workers need no re-import of the caller's __main__ (spawn would, and scripts without
        # a main guard would break); they only run OpenCV/hashlib on files, single-threaded.
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            for chunk in pool.map(_scan_chunk, [(root, c, salt) for c in chunks]):
                rows += chunk
                bar.advance(task, len(chunk))
    return rows


def scan(root: Path, rels: list[str], cache: Path | None = None, workers: int | None = None,
         progress: bool = False, project: Path = Path(".")) -> pd.DataFrame:
    """Scan the listed files (paths relative to root), re-reading only new or changed ones.

    `project` is where the pseudonymisation salt lives (see data_salt).
    """
    salt = data_salt(project, create=any(r.lower().endswith(".dcm") for r in rels))
    salt_id = hashlib.sha256(salt).hexdigest()[:12]
    cached = pd.DataFrame(columns=COLUMNS)
    if cache is not None and cache.is_file() and cache.with_suffix(".salt").read_text() == salt_id:
        cached = _unchanged(pd.read_csv(cache, keep_default_na=False), root, rels)
    todo = sorted(set(rels) - set(cached["path"]))
    fresh = pd.DataFrame([asdict(r) for r in _run(root, todo, salt, workers or os.cpu_count() or 1, progress)],
                         columns=COLUMNS)
    table = pd.concat([cached, fresh] if len(cached) else [fresh], ignore_index=True).astype(DTYPES)
    table = table.set_index("path").loc[rels].reset_index() if len(table) else table
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(cache, index=False)
        cache.with_suffix(".salt").write_text(salt_id)
    return table

