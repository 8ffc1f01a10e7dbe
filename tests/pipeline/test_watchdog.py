"""pipeline.watchdog with real processes and real signals: a SIGKILLed parent takes its children along."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog reads /proc (Linux)")

CHILD = """
import os, socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print("ready", os.getpid(), s.getsockname()[1], flush=True)
time.sleep(600)
"""
PARENT = """
import subprocess, sys, time
from pipeline import watchdog
watchdog.guard_descendants()
print("watcher", watchdog._watcher.pid, flush=True)
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
time.sleep(float(sys.argv[2]))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in "ZX"  # a zombie that nobody reaps yet has exited all the same


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _parent(linger: float) -> tuple[subprocess.Popen, int, int, int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(linger)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    watcher = int(parent.stdout.readline().split()[1])
    _, child, port = parent.stdout.readline().split()
    time.sleep(1.2)  # the watcher records the child within its 0.5 s interval
    return parent, watcher, int(child), int(port)


def _cleanup(*pids: int) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigkilled_parent_takes_its_listening_child_along():
    parent, watcher, child, port = _parent(linger=600)
    try:
        assert _alive(child)
        assert not _port_free(port)
        parent.kill()  # SIGKILL: no atexit, no finally, nothing of the parent runs
        parent.wait(timeout=10)
        assert _gone_within(child, 5), "the child outlived its SIGKILLed parent"
        assert _port_free(port)
        assert _gone_within(watcher, 5), "the watcher did not exit"
    finally:
        _cleanup(child, watcher)


def test_normally_exiting_parent_leaves_no_watcher_and_no_child():
    parent, watcher, child, port = _parent(linger=2)  # long enough for the watcher to see the child
    try:
        assert parent.wait(timeout=10) == 0
        assert _gone_within(watcher, 3), "the watcher outlived a normally exiting parent"
        assert _gone_within(child, 3)
        assert _port_free(port)
    finally:
        _cleanup(child, watcher)


def test_signal_to_the_parents_process_group_does_not_reach_the_watcher():
    parent, watcher, child, port = _parent(linger=600)
    try:
        assert os.getsid(watcher) == watcher != os.getsid(parent.pid)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        assert _gone_within(child, 5)
        _cleanup(child, watcher)
