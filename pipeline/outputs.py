"""Crash-safe step outputs: a step writes into a fresh temporary folder that replaces its output
folder only once complete, so a crash at any moment leaves either the old outputs or the new ones,
never a mixture, and no file of an earlier run leaks into a later one."""

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pipeline.errors import MedpipeError

T = TypeVar("T")


@contextmanager
def replace_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it becomes `final`.

    Args:
        final: The step's output folder (e.g. outputs/evaluate).

    Returns:
        A context manager yielding the folder to write into. On an exception the temporary folder is
        removed and `final` is left as it was.

    Yields:
        The temporary folder.
    """
    recover(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, final)


def swap_in(tmp: Path, final: Path) -> None:
    """Make the complete folder `tmp` the folder `final` (the old one is moved aside, then removed).

    Args:
        tmp: A complete folder on the same file system.
        final: Where it goes.
    """
    from pipeline import faults

    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    faults.point("outputs.swap")  # between the two renames: `recover` puts the old folder back
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob(f".{final.name}.*"):  # leftovers of killed runs
        if not _alive(stale.name.rpartition("-")[2]):
            shutil.rmtree(stale, ignore_errors=True)


def recover(final: Path) -> bool:
    """Put back the folder a writer killed between swap_in's two renames had moved aside.

    Args:
        final: An output folder.

    Returns:
        Whether a folder was put back (`final` was missing and a dead writer's old one was there).
    """
    if final.exists():
        return False
    moved = [p for p in final.parent.glob(f".{final.name}.old-*") if not _alive(p.name.rpartition("-")[2])]
    if not moved:
        return False
    os.rename(max(moved, key=lambda p: p.stat().st_mtime), final)
    return True


def write_text(path: Path, text: str) -> Path:
    """Write a file atomically (a temporary file renamed over it): readers see old or new, never half.

    Args:
        path: The file.
        text: Its new content.

    Returns:
        The path.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # of writers killed before their rename
        if not _alive(stale.name.rpartition("-")[2]):
            stale.unlink(missing_ok=True)
    return path


def read_result(path: Path, step: str, build: Callable[[dict], T]) -> T:
    """A step's result read back from the JSON file it wrote (for a later step run on its own).

    Args:
        path: The JSON file (e.g. outputs/train/run.json).
        step: The step that writes it (named in the error).
        build: Makes the typed result from the parsed JSON.

    Returns:
        The result.

    Raises:
        MedpipeError: The file is missing or not what the step writes: one line naming the stage to run.
    """
    recover(path.parent)
    try:
        return build(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        raise MedpipeError(path, f"no {step} output: run `medpipe stage {step}` first") from None


def _alive(pid: str) -> bool:
    """Whether the writer whose pid ends a leftover's name still runs (this process counts as gone)."""
    if not pid.isdigit() or int(pid) <= 0 or int(pid) == os.getpid():
        return False  # pid 0 would signal our own process group
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
