"""pipeline.faults with real processes: a named fail point stops its process there, to be killed or let go."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.faults import MARKER_ENV, POINT_ENV, point

REPO = Path(__file__).resolve().parents[2]
LOOP = """
import sys
from pathlib import Path
from pipeline.faults import point
log = Path(sys.argv[1])
for i in range(1, 6):
    log.write_text(log.read_text() + f"{i} ")
    point("step.done")
log.write_text(log.read_text() + "end")
"""


def _start(tmp_path: Path, wanted: str) -> tuple[subprocess.Popen, Path, Path]:
    """The loop in a real process with `$MEDPIPE_FAULT_POINT=wanted`; its marker and its progress log."""
    marker, log = tmp_path / "marker", tmp_path / "log"
    log.write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO), POINT_ENV: wanted, MARKER_ENV: str(marker)}
    return subprocess.Popen([sys.executable, "-c", LOOP, str(log)], env=env), marker, log


def _stopped_at(process: subprocess.Popen, marker: Path) -> int:
    """The pid the marker names, once the process has written it (it stands at the fail point)."""
    deadline = time.monotonic() + 10
    while not (marker.is_file() and marker.read_text().strip()):
        assert process.poll() is None, "exited before its fail point"
        assert time.monotonic() < deadline, "fail point not reached"
        time.sleep(0.05)
    return int(marker.read_text())


@pytest.mark.parametrize("wanted", ["", "other.point", "step.done.later"])
def test_point_does_nothing_unless_the_environment_names_it(tmp_path, monkeypatch, wanted):
    monkeypatch.setenv(POINT_ENV, wanted)
    monkeypatch.setenv(MARKER_ENV, str(tmp_path / "marker"))
    point("step.done")
    assert not (tmp_path / "marker").exists()


def test_the_process_waits_at_its_point_until_the_go_file_appears(tmp_path):
    process, marker, log = _start(tmp_path, "step.done")
    assert _stopped_at(process, marker) == process.pid
    time.sleep(0.3)  # time enough to run on, were it not waiting
    assert log.read_text() == "1 "
    marker.with_name(marker.name + ".go").write_text("")
    assert process.wait(timeout=10) == 0
    assert log.read_text() == "1 2 3 4 5 end"  # it stops once, then runs on through every later arrival


def test_a_process_killed_at_the_nth_arrival_did_exactly_n_steps(tmp_path):
    process, marker, log = _start(tmp_path, "step.done:3")
    os.kill(_stopped_at(process, marker), signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL
    assert log.read_text() == "1 2 3 "
