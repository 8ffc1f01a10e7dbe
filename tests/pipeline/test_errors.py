"""pipeline.errors: the one-line `<file>: <reason>` message and the exit code of each expected failure."""

import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, DataError, ImageError, MedpipeError


def test_message_is_the_file_then_the_reason():
    err = MedpipeError(Path("data") / "a.png", "cannot be decoded")
    assert str(err) == f"{Path('data') / 'a.png'}: cannot be decoded"
    assert err.file == str(Path("data") / "a.png")
    assert err.reason == "cannot be decoded"


@pytest.mark.parametrize(("kind", "code"), [(MedpipeError, 1), (DataError, 1), (ImageError, 1), (ConfigError, 2)])
def test_usage_errors_exit_2_and_data_errors_exit_1(kind, code):
    assert kind("f", "r").exit_code == code


def test_an_unreadable_image_is_caught_as_a_data_error():
    with pytest.raises(DataError) as caught:
        raise ImageError("x.dcm", "unsupported DICOM")
    assert isinstance(caught.value, MedpipeError)
    assert str(caught.value) == "x.dcm: unsupported DICOM"


def test_cli_prints_one_literal_error_line_and_exits_with_the_errors_code(tmp_path, monkeypatch, capsys):
    from cli.main import main

    out = tmp_path / ("a-long-folder-name-[red]-" * 6)  # brackets: no rich markup; long: no wrapping
    out.mkdir()
    (out / "manifest.csv").write_text("path,label,patient_id\n")
    monkeypatch.setattr(sys, "argv", ["medpipe", "data", "synth", "--out", str(out)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: {out / 'manifest.csv'}: already exists; use --force to overwrite\n"


@pytest.mark.parametrize("kind", [MedpipeError, ConfigError, DataError])
def test_errors_cross_processes_whole(kind):
    import pickle

    err = pickle.loads(pickle.dumps(kind("params.yaml", "bad value")))  # a Dask worker's error, as it arrives
    assert type(err) is kind
    assert (err.file, err.reason, str(err)) == ("params.yaml", "bad value", "params.yaml: bad value")
