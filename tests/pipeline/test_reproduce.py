"""reproduce.checkout: the commit comes from a registry tag (data), so only a full commit id reaches git."""

import subprocess

import pytest

from pipeline.errors import MedpipeError
from pipeline.reproduce import checkout, training_steps


@pytest.fixture
def repo(tmp_path):
    base = tmp_path / "repo"
    base.mkdir()
    (base / "a.txt").write_text("a\n")
    for args in (["init", "-q"], ["add", "a.txt"], ["commit", "-qm", "one"]):
        subprocess.run(["git", *args], cwd=base, check=True)
    return base


@pytest.mark.parametrize(
    "commit",
    [
        "--output={out}",
        "--remote=file:///nonexistent",
        "HEAD",
        "HEAD~0",
        "{short}",
        "{full}\n--output={out}",
        "{full}:a.txt",
    ],
)
def test_checkout_refuses_anything_but_a_full_commit_id(repo, tmp_path, commit):
    full = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    out = tmp_path / "x"
    (tmp_path / "into").mkdir()
    with pytest.raises(MedpipeError, match="not a full commit id") as caught:
        checkout(repo, commit.format(out=out, short=full[:12], full=full), "md5", tmp_path / "into", "data")
    assert "\n" not in str(caught.value)
    assert not out.exists()
    assert not any((tmp_path / "into").iterdir())


def test_checkout_archives_a_full_commit_id(repo, tmp_path):
    full = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (tmp_path / "into").mkdir()
    with pytest.raises(MedpipeError, match="no DVC pointer"):  # past git archive, which wrote the commit's files
        checkout(repo, full, "md5", tmp_path / "into", "data")
    assert (tmp_path / "into" / "a.txt").read_text() == "a\n"


def test_the_rebuilt_steps_are_the_commits_own_stages_up_to_evaluation(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  validate: {cmd: a}\n  clean: {cmd: b}\n  evaluate: {cmd: c}\n  register: {cmd: d}\n"
    )
    assert training_steps(tmp_path / "dvc.yaml") == ["validate", "clean", "evaluate"]
