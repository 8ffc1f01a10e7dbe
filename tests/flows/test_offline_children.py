"""The network guard reaches child processes."""

import os
import subprocess
import sys

import pytest

from tests.helpers import assert_offline, guarded_env

CHILD = """
import socket
for what, attempt in (("connect", lambda: socket.create_connection(("203.0.113.1", 80), timeout=5)),
                      ("lookup", lambda: socket.getaddrinfo("example.com", 80))):
    try:
        attempt()
        print(what, "allowed")
    except OSError as err:
        print(what, "refused", "offline" in str(err))
"""


def test_the_guard_refuses_and_logs_in_a_child_process(tmp_path):
    log = tmp_path / "netguard.log"
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=guarded_env(dict(os.environ), log),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split("\n")[:2] == ["connect refused True", "lookup refused True"], done.stdout + done.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert "'203.0.113.1'" in lines[0]
    assert "'example.com'" in lines[1]
    assert all("argv0=-c" in line for line in lines)
    with pytest.raises(AssertionError, match="203.0.113.1"):
        assert_offline(log)


# A real `medpipe run` inside a fresh network namespace (only loopback up) is the first step of
# tests/faults/test_kill_points.py, under this guard.
