"""The network guard reaches child processes, and medpipe needs no network at all: a real `medpipe run`
in a fresh network namespace with only loopback up."""

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, assert_offline, guarded_env

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
    done = subprocess.run([sys.executable, "-c", CHILD], env=guarded_env(dict(os.environ), log),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:2] == ["connect refused True", "lookup refused True"], done.stdout + done.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and "'203.0.113.1'" in lines[0] and "'example.com'" in lines[1]
    assert all("argv0=-c" in line for line in lines)
    with pytest.raises(AssertionError, match="203.0.113.1"):
        assert_offline(log)


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -n` and `ip` (root or user namespaces)")
def test_medpipe_run_completes_without_any_network(project, tmp_path):
    log = tmp_path / "netguard.log"
    env = guarded_env({**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get(
        "PYTHONPATH")]))}, log)
    env.pop("PREFECT_API_URL", None)  # Prefect's own temporary server, on the namespace's loopback
    command = f"ip link set lo up && exec {sys.executable} -m pipeline.cli run"
    done = subprocess.run(["unshare", "-n", "sh", "-c", command], cwd=project, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "models:/medpipe-classifier/1" in done.stdout
    assert_offline(log)
