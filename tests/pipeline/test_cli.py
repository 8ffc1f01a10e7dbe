"""The `medpipe` command as users run it: exit codes, one-line errors, no tracebacks."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

MEDPIPE = str(Path(sys.executable).with_name("medpipe"))


def medpipe(*args, cwd=None):
    return subprocess.run(
        [MEDPIPE, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def _one_error_line(done, code, *fragments):
    assert done.returncode == code, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_the_commands():
    done = medpipe("--help")
    assert done.returncode == 0
    for command in ("run", "validate", "stage", "data"):
        assert command in done.stdout


def test_unknown_params_key_is_a_usage_error(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  epoch: 3\n")
    _one_error_line(medpipe("run", "--params", tmp_path / "params.yaml"), 2, "params.yaml", "unknown key 'train.epoch'")
    _one_error_line(medpipe("run", "--set", "train.epochs", "--params", tmp_path / "params.yaml"), 2, "KEY=VALUE")


def test_validate_good_and_bad_data(tmp_path, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    repo_params = Path(__file__).resolve().parents[2] / "params.yaml"
    shutil.copy(repo_params, tmp_path / "params.yaml")
    good = medpipe("validate", data, "--params", tmp_path / "params.yaml")
    assert good.returncode == 0
    assert "checks passed" in good.stdout
    rel = pd.read_csv(data / "manifest.csv")["path"][0]
    (data / rel).write_bytes(b"")
    # near-duplicate checks off: this asserts the one error line of an unreadable image alone
    _one_error_line(
        medpipe(
            "validate", data, "--params", tmp_path / "params.yaml", "--set", "validate.near_duplicates.enabled=false"
        ),
        1,
        str(data),
        "image readable",
        rel,
        "report.md",
    )


def test_synth_refuses_to_overwrite(tmp_path):
    assert medpipe("data", "synth", "--out", tmp_path, "--patients", 3, "--size", 16).returncode == 0
    _one_error_line(medpipe("data", "synth", "--out", tmp_path), 1, "manifest.csv", "already exists")


@pytest.mark.parametrize("args", [("stage", "nonsense"), ("run", "--no-such-flag")])
def test_usage_errors_exit_2(args):
    assert medpipe(*args).returncode == 2


def test_import_npz_then_validate_with_a_label_override(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {
        f"{s}_images": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        for s, n in (("train", 12), ("val", 6), ("test", 6))
    }
    arrays.update({f"{s}_labels": np.arange(n) % 2 for s, n in (("train", 12), ("val", 6), ("test", 6))})
    np.savez(tmp_path / "m.npz", **arrays)
    done = medpipe("data", "import-npz", tmp_path / "m.npz", "--out", tmp_path / "d", "--labels", "neg,pos")
    assert done.returncode == 0
    assert "--set 'validate.labels=[neg, pos]'" in done.stdout
    shutil.copy(Path(__file__).resolve().parents[2] / "params.yaml", tmp_path / "params.yaml")
    ok = medpipe(
        "validate",
        tmp_path / "d",
        "--params",
        tmp_path / "params.yaml",
        "--set",
        "validate.labels=[neg, pos]",
        "--set",
        "validate.min_per_class=3",
    )
    assert ok.returncode == 0, ok.stderr
    # classes pinned on the command line that the data do not hold: one line with both sets and the fix
    _one_error_line(
        medpipe(
            "validate", tmp_path / "d", "--params", tmp_path / "params.yaml", "--set", "validate.labels=normal,nodule"
        ),
        2,
        "validate.labels: params pin the classes normal, nodule but",
        "holds neg, pos: run with --set validate.labels=neg,pos",
    )


def test_bad_set_value_blames_the_flag_not_params_yaml(project):
    done = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--set", "train.epochs=abc"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    _one_error_line(done, 2, "--set train.epochs", "invalid value for 'train.epochs'")
    assert "params.yaml" not in done.stderr


def test_version_short_help_and_plain_help():
    done = medpipe("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("medpipe ")
    done = medpipe("run", "-h")
    assert done.returncode == 0
    assert "--resume" in done.stdout
    assert "KEY=VALUE" in done.stdout
    assert "<list[str]>" not in done.stdout
    assert done.stdout.count("<bool>") <= 1  # only --help's own


def test_missing_data_and_params_are_usage_errors_saying_where_medpipe_looked(tmp_path, project):
    _one_error_line(
        medpipe("run", "--data", tmp_path / "nowhere", "--params", project / "params.yaml"),
        2,
        "nowhere",
        "data folder not found",
    )
    _one_error_line(
        medpipe("run", cwd=tmp_path / "data" if (tmp_path / "data").is_dir() else tmp_path),
        2,
        "params.yaml",
        "looked in",
        "-p/--params",
    )


def test_own_class_folders_bring_their_classes_and_a_wrong_pin_stops_before_any_server(project):
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for label in ("benign", "malignant"):  # own class folders; params.yaml pins the built-in set's classes
        (project / "mine" / label).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(project / "mine" / label / f"{i}.png"), rng.integers(0, 256, (32, 32), dtype=np.uint8))
    found = medpipe("validate", project / "mine", "--params", project / "params.yaml")
    assert found.returncode == 0, found.stderr
    report = (project / "outputs" / "reports" / "mine" / "report.md").read_text()
    assert "Class counts: benign 5, malignant 5" in report
    assert "Colour: gray" in report
    shutil.rmtree(project / "outputs")
    done = medpipe(
        "run", "--data", project / "mine", "--params", project / "params.yaml", "--set", "validate.labels=normal,nodule"
    )
    _one_error_line(done, 2, "validate.labels:", "holds benign, malignant", "--set validate.labels=benign,malignant")
    assert not (project / "outputs").exists()
    assert not (project / "mlflow" / "mlflow.db").exists()


def test_verbose_shows_what_medpipe_hides_by_default(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app
    from pipeline._env import OFFLINE_DEFAULTS, VERBOSE_VALUES

    for key in VERBOSE_VALUES:  # restored after the test
        monkeypatch.setenv(key, OFFLINE_DEFAULTS.get(key, ""))
    args = ["data", "synth", "--out", str(tmp_path / "d"), "--patients", "3", "--size", "16"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"  # TensorFlow's C++ log hidden by default
    assert CliRunner().invoke(app, ["-v", *args[:3], str(tmp_path / "e"), *args[4:]]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # ... and shown with -v, also to the processes it starts
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"  # telemetry stays off
