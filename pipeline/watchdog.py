"""When a process dies, even by SIGKILL, its descendants die with it (Linux; elsewhere a no-op).

`guard_descendants()` starts `python -m pipeline.watchdog <pid>` in its own session (a signal to the
caller's process group does not reach it). Every INTERVAL s it records the caller's descendants from
/proc, each with its start time (so a reused pid is never killed); once the caller is gone it SIGKILLs
those still alive and exits. A child started less than INTERVAL s before the caller died can escape.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

INTERVAL = 0.5
_watcher: subprocess.Popen | None = None


class ProcStat(NamedTuple):
    """What /proc/<pid>/stat says of a process (fields 3, 4, 6 and 22)."""

    state: str  # R, S, D, ..., Z (zombie), X (dead)
    parent: int
    session: int
    start: str  # clock ticks since boot: with the pid, names one process even after the pid is reused


def proc_stat(pid: int) -> ProcStat | None:
    """A process's state, parent, session and start time, as /proc/<pid>/stat has them.

    Args:
        pid: The process id.

    Returns:
        Its ProcStat (zombies included), or None when there is no such process.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # comm may hold ") "
    except (OSError, ValueError):
        return None
    return ProcStat(fields[0], int(fields[1]), int(fields[3]), fields[19])


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, None if it is gone or a zombie."""
    stat = proc_stat(pid)
    return None if stat is None or stat.state in "ZX" else (stat.parent, stat.start)


def _descendants(pid: int) -> dict[int, str]:
    """Every live descendant of `pid` (not this process) with its start time."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p)))}
    found, todo = {}, [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, (ppid, _) in stats.items() if ppid == parent and p != os.getpid() and p not in found]
        found.update({p: stats[p][1] for p in kids})
        todo += kids
    return found


def watch(pid: int, started: str, then: list[str] | None = None) -> None:
    """Record `pid`'s descendants until it is gone (or its pid was reused), then SIGKILL the survivors and
    run `then` (a clean-up command, e.g. closing the dead run's MLflow runs), if given.

    Args:
        pid: The process to watch.
        started: Its start time (/proc stat field 22), to tell a reused pid.
        then: A command to run once it is gone; None or empty: none.
    """
    seen: dict[int, str] = {}
    while (stat := _stat(pid)) and stat[1] == started:
        seen.update(_descendants(pid))
        time.sleep(INTERVAL)
    for child, child_started in seen.items():
        if (now := _stat(child)) and now[1] == child_started:
            with contextlib.suppress(OSError):  # it exited just now
                os.kill(child, signal.SIGKILL)
    if then:
        subprocess.run(
            then,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )


def guard_descendants(then: list[str] | None = None) -> None:
    """Start the watcher for this process (once); Linux only, elsewhere nothing happens.

    Args:
        then: A command the watcher runs once this process is gone (after a crash or a normal exit).
    """
    global _watcher
    if _watcher is not None or not sys.platform.startswith("linux") or not (stat := _stat(os.getpid())):
        return
    here = str(Path(__file__).resolve().parents[1])  # this very pipeline package, whatever the cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    _watcher = subprocess.Popen(
        [sys.executable, "-m", "pipeline.watchdog", str(os.getpid()), stat[1], json.dumps(then or [])],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
