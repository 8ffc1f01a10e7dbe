"""Manifest scan: one row of facts per image, parallel over cores, incremental across runs."""

import hashlib
import os
import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import cv2

from pipeline.errors import ImageError
from pipeline.imageio import chroma, read_image, to_gray
from pipeline.limits import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_PIXELS, MB, check_size
from pipeline.near_duplicates import VERSION as FINGERPRINT_VERSION
from pipeline.near_duplicates import find_groups, fingerprints, small_images

if TYPE_CHECKING:
    import pandas as pd

SALT_FILE = ".medpipe-salt"
SALT_ENV = "MEDPIPE_PSEUDONYM_SALT"
# Worker processes pay off only when decoding dominates: below this many bytes to read (e.g. 10,000
# 64x64 PNGs, ~35 MB) one process is faster than starting workers (benchmarks/scan.py).
PARALLEL_BYTES = 64 * 2**20
LOCAL_CHUNK = 64  # files per unit of work for this machine's worker processes (a mapper's units: chunk_size)
# An order-keeping map over units of work, e.g. Prefect tasks on a Dask cluster (flows/data.py). Steps
# that take one run their units through it instead of their own process or thread pool.
Mapper = Callable[[Callable[[Any], Any], list], Iterable]


class ScanRow(NamedTuple):
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
    fingerprint: str  # perceptual hash of the decoded pixels (pipeline.near_duplicates), "" when unreadable
    chroma: float = 0.0  # how much colour it carries (pipeline.imageio.chroma); 0 for one channel
    windows: str = ""  # the fingerprints of 20 corner and 20 edge windows (crops, shifts), "" when unreadable


COLUMNS = list(ScanRow._fields)
DTYPES = {
    name: {str: str, int: "int64", float: "float64", bool: bool}[kind] for name, kind in ScanRow.__annotations__.items()
}


def data_salt(project: Path, create: bool) -> bytes:
    """The pseudonymisation salt: $MEDPIPE_PSEUDONYM_SALT, else `<project>/.medpipe-salt` (made on first use).

    It stays out of git and out of the data folder (which stays untouched); it makes the
    pseudonyms in outputs, logs and MLflow irreversible for anyone without it. Teams that train
    in several places share it through the environment variable.

    Args:
        project: The project folder (where params.yaml is).
        create: Write a new random salt file when there is none (and no environment variable).

    Returns:
        The salt; b"" when there is none and `create` is False.
    """
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode()
    path = project / SALT_FILE
    if not path.is_file() and create:
        path.write_text(secrets.token_hex(32) + "\n")
    return path.read_text().strip().encode() if path.is_file() else b""


@lru_cache(maxsize=64)
def _resolved(root: Path) -> Path:
    return root.resolve()


def inside_root(root: Path, rel: str) -> bool:
    """Whether `rel` stays inside `root` once resolved (no `../` escapes, absolute paths or symlinks out).

    Args:
        root: The data root.
        rel: A path from the manifest.

    Returns:
        True when `root / rel` resolves inside `root`.
    """
    try:
        (root / rel).resolve().relative_to(_resolved(root))
        return True
    except ValueError:
        return False


def scan_file(
    root: Path,
    rel: str,
    salt: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_FILE_MB * MB,
    with_fingerprint: bool = True,
) -> ScanRow:
    """Scan one image; an unusable file gives a row with readable=False and the reason.

    The perceptual fingerprint and its windows come from the same decode (`with_fingerprint=False` leaves
    them empty: benchmarks measure their cost with it).

    A file over `max_bytes` (by stat) is not read, one whose header declares more than `max_pixels`
    is not decoded (pipeline.limits): both are unreadable rows naming the cap.

    Args:
        root: The data root.
        rel: The file's path relative to `root`.
        salt: The pseudonymisation salt (DICOM patient keys).
        max_pixels: Cap on the pixels its header declares.
        max_bytes: Cap on its size in bytes.
        with_fingerprint: Compute the perceptual fingerprint and its windows.

    Returns:
        The file's row (never raises for an unusable image).
    """
    path = root / rel
    if not inside_root(root, rel):
        return ScanRow(rel, 0, 0, "", 0, 0, 0, 0, 0.0, 0.0, 0.0, False, "path outside the data root", "", "")
    try:
        stat = path.stat()
        if not path.is_file():
            raise IsADirectoryError(rel)
        check_size(rel, stat.st_size, max_bytes)  # before reading
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return ScanRow(rel, 0, 0, "", 0, 0, 0, 0, 0.0, 0.0, 0.0, False, "file not found", "", "")
    except ImageError as err:
        return ScanRow(rel, stat.st_size, stat.st_mtime_ns, "", 0, 0, 0, 0, 0.0, 0.0, 0.0, False, err.reason, "", "")
    size, mtime, sha = stat.st_size, stat.st_mtime_ns, hashlib.sha256(data).hexdigest()
    try:
        image = read_image(path, salt, data, max_pixels, None)  # the header, before decoding
    except ImageError as err:
        return ScanRow(rel, size, mtime, sha, 0, 0, 0, 0, 0.0, 0.0, 0.0, False, err.reason, "", "")
    gray = to_gray(image.pixels) * 255.0
    mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(gray))
    blur = float(cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))[1][0, 0] ** 2)  # variance of the Laplacian
    h, w = image.pixels.shape[:2]
    whole, windows = fingerprints(gray) if with_fingerprint else ("", "")
    return ScanRow(
        rel,
        size,
        mtime,
        sha,
        w,
        h,
        image.channels,
        image.bit_depth,
        mean,
        std,
        blur,
        True,
        "",
        image.patient_key or "",
        whole,
        chroma(image.pixels),
        windows,
    )


def scan_chunk(args: tuple) -> list[ScanRow]:
    """Scan a run of files, (root, relative paths, salt[, max_pixels, max_bytes]): one unit of parallel work.

    Args:
        args: (root, relative paths, salt[, max_pixels, max_bytes]), as scan_file takes them.

    Returns:
        One row per path, in order.
    """
    from threadpoolctl import threadpool_limits

    root, rels, salt, *caps = args
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one process per core already; the caller's setting comes back afterwards
    try:
        with threadpool_limits(1):  # the fingerprints' matrix products, likewise
            return [scan_file(root, rel, salt, *caps) for rel in rels]
    finally:
        cv2.setNumThreads(before)


def _unchanged(cached: "pd.DataFrame", root: Path, rels: list[str]) -> "pd.DataFrame":
    """Cached rows whose file still has the same size and modification time."""
    import pandas as pd

    keep = []
    for row in cached.itertuples(index=False):
        path = root / row.path
        if row.path in rels and path.is_file():
            stat = path.stat()
            if stat.st_size == row.size and stat.st_mtime_ns == row.mtime_ns:
                keep.append(row)
    return pd.DataFrame(keep, columns=COLUMNS)


def _total_bytes(root: Path, rels: list[str]) -> int:
    return sum(os.stat(root / r).st_size for r in rels if inside_root(root, r) and (root / r).is_file())


class _NoBar:
    def advance(self, task: int, n: int) -> None:
        pass


@contextmanager
def _progress(show: bool, total: int):
    """A rich progress bar when asked for (a terminal), else a no-op."""
    if not show:
        yield _NoBar(), 0
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        yield bar, bar.add_task("scanning images", total=total)


def _run(
    root: Path,
    rels: list[str],
    salt: bytes,
    workers: int,
    progress: bool,
    mapper: Mapper | None = None,
    chunk_size: int = 1024,
    caps: tuple[int, int] = (DEFAULT_MAX_PIXELS, DEFAULT_MAX_FILE_MB * MB),
) -> list[ScanRow]:
    size = chunk_size if mapper is not None else LOCAL_CHUNK
    chunks = [(root, rels[i : i + size], salt, *caps) for i in range(0, len(rels), size)]
    rows: list[ScanRow] = []
    with _progress(progress, len(rels)) as (bar, task):
        if mapper is not None or workers <= 1 or _total_bytes(root, rels) < PARALLEL_BYTES:
            for chunk in (mapper or map)(scan_chunk, chunks):
                rows += chunk
                bar.advance(task, len(chunk))
            return rows
        # spawn, not fork: a forked child can hang on a lock held by one of OpenCV's (or TF's)
        # threads in the parent. Scripts that call this need the usual `if __name__ == "__main__"`.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for chunk in pool.map(scan_chunk, chunks):
                rows += chunk
                bar.advance(task, len(chunk))
    return rows


def scan(
    root: Path,
    rels: list[str],
    cache: Path | None = None,
    workers: int | None = None,
    progress: bool = False,
    project: Path = Path("."),
    mapper: Mapper | None = None,
    chunk_size: int = 1024,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_FILE_MB * MB,
) -> "pd.DataFrame":
    """Scan the listed files (paths relative to root), re-reading only new or changed ones.

    `project` is where the pseudonymisation salt lives (see data_salt). Worker processes import
    only this module's light top (OpenCV, NumPy), not pandas. With a `mapper`, runs of `chunk_size`
    files go through it instead of this machine's worker processes. Files over `max_bytes`, or
    declaring more than `max_pixels`, are unreadable rows (the cache is redone when a cap changes).

    Args:
        root: The data root.
        rels: The files, relative to `root`.
        cache: The scan cache CSV (None: no cache).
        workers: Worker processes; None: one per core.
        progress: Show a progress bar.
        project: Where the pseudonymisation salt lives.
        mapper: An order-keeping map over units of work (e.g. Prefect tasks on Dask); None: local.
        chunk_size: Files per unit of work given to `mapper`.
        max_pixels: Cap on the pixels a header declares.
        max_bytes: Cap on a file's size in bytes.

    Returns:
        The scan table (COLUMNS), one row per path of `rels`, in their order.
    """
    import pandas as pd

    salt = data_salt(project, create=any(r.lower().endswith(".dcm") for r in rels))
    salt_id = (
        f"{hashlib.sha256(salt).hexdigest()[:12]} max_pixels={max_pixels} max_bytes={max_bytes} "
        f"fingerprints=v{FINGERPRINT_VERSION}"
    )
    cached = _read_cache(cache, salt_id, root, rels) if cache is not None else pd.DataFrame(columns=COLUMNS)
    todo = sorted(set(rels) - set(cached["path"]))
    rows = _run(root, todo, salt, workers or os.cpu_count() or 1, progress, mapper, chunk_size, (max_pixels, max_bytes))
    fresh = pd.DataFrame(rows, columns=COLUMNS)
    table = pd.concat([cached, fresh] if len(cached) else [fresh], ignore_index=True).astype(DTYPES)
    table = table.set_index("path").loc[rels].reset_index() if len(table) else table
    if cache is not None:  # each file whole or not at all (a killed scan, or two scans at once)
        from pipeline.outputs import write_text

        write_text(cache, table.to_csv(index=False))
        write_text(cache.with_suffix(".salt"), salt_id)
    return table


def _read_cache(cache: Path, salt_id: str, root: Path, rels: list[str]) -> "pd.DataFrame":
    """The cached rows still true of their files; none when the cache is missing, of other caps or salt, of an
    older medpipe (other columns), or unreadable (then every file is scanned again)."""
    import pandas as pd

    empty = pd.DataFrame(columns=COLUMNS)
    salt = cache.with_suffix(".salt")
    if not (cache.is_file() and salt.is_file() and salt.read_text() == salt_id):
        return empty
    try:
        old = pd.read_csv(cache, keep_default_na=False, dtype={"fingerprint": str, "windows": str})
        if list(old.columns) != COLUMNS:
            return empty
        return _unchanged(old.astype(DTYPES), root, rels)
    except (ValueError, TypeError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return empty


def duplicate_pairs(
    root: Path,
    threshold: int,
    cache: Path | None = None,
    windows: bool = True,
    small_threshold: int | None = None,
) -> "pd.DataFrame":
    """Scan the data set under `root` (through the scan cache) and list its near-duplicate pairs.

    Args:
        root: a data root (manifest.csv or a folder per class).
        threshold: the largest Hamming distance of a near copy (0 .. MAX_THRESHOLD).
        cache: the scan cache CSV (None: no cache).
        windows: also find crops and shifts (pipeline.near_duplicates' windows).
        small_threshold: the largest distance of a pair with an image under 32 px a side (None: threshold).

    Returns:
        One row per pair: group (its first path), path_a, label_a, path_b, label_b, distance, small (an image
        under 32 px a side: the small threshold applied); sorted by group.
    """
    import pandas as pd

    from pipeline.data import discover

    manifest = discover(root).manifest
    table = scan(root, manifest["path"].tolist(), cache=cache)
    readable = table["readable"].astype(bool)
    fps = table["fingerprint"].where(readable, "").tolist()
    wins = table["windows"].where(readable, "").tolist() if windows else None
    small = small_images(table["width"], table["height"])
    groups = find_groups(fps, threshold, wins, small, small_threshold)
    i, j, d = groups.pairs
    paths, labels = table["path"].to_numpy(), manifest["label"].to_numpy()
    pairs = pd.DataFrame(
        {
            "group": paths[groups.group[i]] if len(i) else [],
            "path_a": paths[i],
            "label_a": labels[i],
            "path_b": paths[j],
            "label_b": labels[j],
            "distance": d,
            "small": small[i] | small[j],
        }
    )
    return pairs.sort_values(["group", "distance", "path_a", "path_b"], ignore_index=True)


def label_summary(table: "pd.DataFrame") -> list[list[str]]:
    """Rows of `medpipe data scan`'s table: per label, images, unreadable ones, the first three sizes,
    mean intensity std and the least blur score (of the readable images).

    Args:
        table: A scan table with a `label` column.

    Returns:
        One row of display strings per label, sorted by label.
    """
    rows = []
    for label, group in table.groupby("label"):
        ok = group[group["readable"].astype(bool)]
        sizes = ", ".join(sorted({f"{w}x{h}" for w, h in zip(ok["width"], ok["height"])})[:3])
        rows.append(
            [
                str(label),
                str(len(group)),
                str(len(group) - len(ok)),
                sizes,
                f"{ok['std'].mean():.1f}" if len(ok) else "-",
                f"{ok['blur'].min():.1f}" if len(ok) else "-",
            ]
        )
    return rows
