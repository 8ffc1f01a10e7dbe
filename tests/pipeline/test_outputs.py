"""pipeline.outputs: a step's outputs are replaced whole or not at all, even when its writer is killed -9."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import MedpipeError
from pipeline.outputs import read_result, replace_dir, write_text

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HALF_WRITTEN_DIR = """
import sys, time
from pathlib import Path
from pipeline.outputs import replace_dir
final = Path(sys.argv[1])
with replace_dir(final) as tmp:
    (tmp / "new.txt").write_text("half")
    (final.parent / "marker").write_text("writing")
    time.sleep(600)
"""
REWRITING = """
import sys
from pathlib import Path
from pipeline.outputs import write_text
path, n = Path(sys.argv[1]), 0
while True:
    write_text(path, "ab"[n % 2] * 2**20)
    n += 1
    (path.parent / "marker").write_text(str(n))
"""


def _started(script: str, target: Path) -> subprocess.Popen:
    """The script running on `target`, once it has written the marker beside it."""
    process = subprocess.Popen([sys.executable, "-c", script, str(target)], env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (target.parent / "marker").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the writer never got going"
        time.sleep(0.05)
    return process


def _tree(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


@pytest.fixture
def final(tmp_path) -> Path:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    return tmp_path / "out"


def test_replace_dir_swaps_in_only_the_new_files_and_leaves_nothing_beside(final):
    with replace_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
        assert _tree(final) == {"old.txt": "old"}  # readers see the old folder until the body completes
    assert _tree(final) == {"new.txt": "new"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["out"]


def test_replace_dir_keeps_the_old_folder_when_the_body_raises(final):
    with pytest.raises(KeyboardInterrupt), replace_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert _tree(final) == {"old.txt": "old"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["out"]


def test_a_kill_9_inside_replace_dir_keeps_the_old_folder_and_the_next_swap_clears_its_leftover(final):
    writer = _started(HALF_WRITTEN_DIR, final)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    assert _tree(final) == {"old.txt": "old"}
    assert (final.parent / f".out.tmp-{writer.pid}").is_dir()  # what the killed writer left
    with replace_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _tree(final) == {"new.txt": "new"}
    assert not (final.parent / f".out.tmp-{writer.pid}").exists()


def test_the_next_swap_keeps_the_folder_of_a_writer_still_alive(final):
    writer = _started(HALF_WRITTEN_DIR, final)
    try:
        with replace_dir(final) as tmp:
            (tmp / "new.txt").write_text("new")
        assert (final.parent / f".out.tmp-{writer.pid}").is_dir()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    assert _tree(final) == {"new.txt": "new"}


def test_write_text_readers_and_a_kill_9_see_one_whole_version_never_a_part(tmp_path):
    path = write_text(tmp_path / "sub" / "run.json", "a" * 2**20)
    wholes = {"a" * 2**20, "b" * 2**20}
    writer = _started(REWRITING, path)
    try:
        for _ in range(200):
            assert path.read_text() in wholes
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    assert path.read_text() in wholes


@pytest.mark.parametrize("content", [None, "{not json", '{"other": 1}'])
def test_read_result_of_a_missing_or_foreign_file_names_the_stage_to_run(tmp_path, content):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MedpipeError) as caught:
        read_result(path, "train", lambda raw: raw["run_id"])
    assert str(caught.value) == f"{path}: no train output: run `medpipe stage train` first"


def test_read_result_builds_the_result_from_the_json(tmp_path):
    path = write_text(tmp_path / "run.json", '{"run_id": "abc"}')
    assert read_result(path, "train", lambda raw: raw["run_id"]) == "abc"


SWAPPING = """
import sys
from pathlib import Path
from pipeline.outputs import replace_dir
with replace_dir(Path(sys.argv[1])) as tmp:
    (tmp / "new.txt").write_text("new")
"""


def test_a_kill_9_between_the_two_renames_gives_the_old_folder_back(final):
    marker = final.parent / "at-swap"
    env = {**ENV, "MEDPIPE_FAULT_POINT": "outputs.swap", "MEDPIPE_FAULT_MARKER": str(marker)}
    writer = subprocess.Popen([sys.executable, "-c", SWAPPING, str(final)], env=env)
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert writer.poll() is None
        assert time.monotonic() < deadline, "the writer never reached the swap"
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    assert not final.exists()  # killed with the old folder moved aside and the new one not yet in place
    with pytest.raises(MedpipeError):
        read_result(final / "result.json", "evaluate", dict)  # a reader first puts the old folder back
    assert _tree(final) == {"old.txt": "old"}


def test_a_killed_writers_temporary_file_goes_with_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".run.json.tmp-{dead.stdout.strip()}"
    leftover.write_text("half")
    write_text(tmp_path / "run.json", "{}")
    assert not leftover.exists()
    assert (tmp_path / "run.json").read_text() == "{}"


@pytest.mark.parametrize("pid", ["0", "99999999999999999999", "abc"])
def test_a_leftover_named_by_no_live_process_is_cleared(final, pid):
    stale = final.parent / f".out.tmp-{pid}"
    stale.mkdir()
    with replace_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert not stale.exists()
