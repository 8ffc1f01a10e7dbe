"""pipeline.lock with real processes: one run holds the project lock, another waits; a kill -9 frees it."""

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.lock import LOCK_FILE, project_lock

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from pathlib import Path
from pipeline.lock import project_lock
base = Path(sys.argv[1])
with project_lock(base):
    (base / "held").write_text("yes")
    while not (base / "go").exists():
        time.sleep(0.05)
"""


def _poll(check, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(check())


def _take_in_a_thread(base: Path, said: list[str]) -> threading.Event:
    """Take the lock in a daemon thread of this process (polling every 50 ms); the event is set once held."""
    acquired = threading.Event()

    def take() -> None:
        with project_lock(base, poll_s=0.05, say=said.append):
            acquired.set()

    threading.Thread(target=take, daemon=True).start()
    return acquired


@pytest.fixture
def holder(tmp_path):
    """A real process holding tmp_path's project lock until tmp_path/go appears."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert _poll(lambda: (tmp_path / "held").exists() or process.poll() is not None), "the holder never took the lock"
    assert process.poll() is None, "the holder exited"
    yield process
    process.kill()
    process.wait(timeout=10)


def test_a_second_run_waits_while_another_process_holds_the_lock_and_names_it(tmp_path, holder):
    said: list[str] = []
    acquired = _take_in_a_thread(tmp_path, said)
    assert _poll(lambda: said), "no waiting notice"
    assert not acquired.is_set()
    assert f"(pid {holder.pid})" in said[0]
    (tmp_path / "go").write_text("")
    assert acquired.wait(10), "the waiter never got the lock after the holder let go"
    assert len(said) == 1  # one notice, not one per poll


def test_a_kill_9_of_the_holder_frees_the_lock_at_once(tmp_path, holder):
    holder.kill()  # SIGKILL: nothing of the holder runs, the OS drops its lock
    holder.wait(timeout=10)
    said: list[str] = []
    assert _take_in_a_thread(tmp_path, said).wait(10), "a dead holder still blocks the lock"
    assert said == []  # not even one poll's wait
    assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())


def test_the_lock_file_names_only_the_current_holder_and_the_lock_goes_when_the_body_raises(tmp_path):
    (tmp_path / LOCK_FILE).write_text("4194303999")  # a longer pid left by an earlier holder
    with pytest.raises(RuntimeError), project_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())
        raise RuntimeError("step failed")
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while anyone still holds it
    finally:
        os.close(fd)
