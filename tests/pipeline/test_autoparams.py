"""Labels and colour found in the data (`auto`), and pinned classes checked against the data."""

import cv2
import numpy as np
import pytest

from pipeline.autoparams import labels_from_data, resolve, sample_color
from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.imageio import CHROMA_MIN, chroma
from tests.helpers import SHARED_DATASETS, write_dicom


def _folders(root, labels=("benign", "malignant"), colour: bool = False, n: int = 4):
    rng = np.random.default_rng(0)
    for label in labels:
        (root / label).mkdir(parents=True)
        for i in range(n):
            gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            image = np.dstack([gray, gray // 2, 255 - gray]) if colour else cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
            cv2.imwrite(str(root / label / f"{i}.png"), image)  # gray stored as 3 equal channels
    return root


def _params(labels="auto", color="auto", backend="tensorflow") -> Params:
    return Params.model_validate(
        {"validate": {"labels": labels}, "preprocess": {"color": color}, "train": {"backend": backend}}
    )


def test_auto_backend_is_keras_backend_else_tensorflow_and_recorded_in_the_params(tmp_path, monkeypatch):
    root = _folders(tmp_path / "d", ("a", "b"))
    params = _params(["a", "b"], "gray", backend="auto")
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    resolved = resolve(params, root)
    assert resolved.params.train.backend == "tensorflow"
    assert resolved.params.md5() != params.md5()  # the lineage names the backend used
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    resolved = resolve(params, root)
    assert resolved.params.train.backend == "jax"
    assert any("Keras backend: jax" in note for note in resolved.notes)
    assert resolve(_params(["a", "b"], "gray", backend="tensorflow"), root).params.train.backend == "tensorflow"


def test_chroma_tells_colour_from_gray_stored_as_rgb():
    gray = np.random.default_rng(1).random((8, 8))
    assert chroma(gray) == 0.0
    assert chroma(np.dstack([gray] * 3)) == 0.0
    assert chroma(np.dstack([gray, gray * 0.5, 1 - gray])) > CHROMA_MIN


def test_auto_labels_are_the_sorted_class_folders(tmp_path):
    root = _folders(tmp_path / "d", ("malignant", "benign"))
    resolved = resolve(_params(color="gray"), root)
    assert resolved.params.validate_.classes == ["benign", "malignant"]
    assert resolved.notes == ["classes found in d: benign, malignant"]


def test_data_given_on_the_command_line_brings_its_classes(tmp_path):
    root = _folders(tmp_path / "d")
    same_set = resolve(_params(["malignant", "benign"], "gray"), root, labels_from_data=True)
    assert same_set.params.validate_.classes == ["malignant", "benign"]
    assert same_set.notes == []  # order kept
    other = resolve(_params(["normal", "nodule"], "gray"), root, labels_from_data=True)
    assert other.params.validate_.classes == ["benign", "malignant"]
    assert "params pin normal, nodule for data.root" in other.notes[0]
    typo = resolve(
        _params(["benign", "malignant", "other"], "gray"),
        _folders(tmp_path / "t", ("benign", "malign")),
        labels_from_data=True,
    )  # some in common: pinned stay, validation names the unknown files
    assert typo.params.validate_.classes == ["benign", "malignant", "other"]
    assert typo.notes == []
    assert labels_from_data(True, {})
    assert not labels_from_data(True, {"validate.labels": "a,b"})
    assert not labels_from_data(False, None)


def test_pinned_classes_the_data_do_not_hold_are_one_line_with_the_fix(tmp_path):
    root = _folders(tmp_path / "d")
    with pytest.raises(ConfigError) as err:
        resolve(_params(["normal", "nodule"], "gray"), root)
    assert str(err.value) == (
        f"validate.labels: params pin the classes normal, nodule but {root} holds benign, "
        "malignant: run with --set validate.labels=benign,malignant (or validate.labels: "
        "auto in params.yaml)"
    )
    overlap = _params(["benign", "other"], "gray")  # a few unknown labels: validation names each file
    assert resolve(overlap, root).params == overlap
    assert resolve(overlap, tmp_path / "missing").params == overlap  # unreadable data: validation says why


def test_auto_colour_is_rgb_only_for_images_that_carry_colour(tmp_path):
    coloured = resolve(_params(["benign", "malignant"]), _folders(tmp_path / "c", colour=True))
    assert coloured.params.preprocess.color == "rgb"
    assert coloured.params.preprocess.channels == 3
    assert coloured.notes == ["colour: rgb (8 of 8 sampled images carry colour; preprocess.color: auto)"]
    gray = resolve(_params(["benign", "malignant"]), _folders(tmp_path / "g"))
    assert gray.params.preprocess.color == "gray"
    assert gray.params.preprocess.channels == 1


def test_dicom_and_unreadable_files_count_as_gray(tmp_path):
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    write_dicom(root / "a" / "x.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    (root / "a" / "broken.png").write_bytes(b"not a png")
    assert sample_color(root, ["a/x.dcm", "a/broken.png", "../outside.png"], Params()) == ("gray", 0, 1)


def test_auto_labels_of_unreadable_data_are_the_reason_in_one_line(tmp_path):
    from pipeline.errors import DataError

    with pytest.raises(DataError, match="data folder not found"):
        resolve(_params(color="gray"), tmp_path / "missing")


def test_auto_is_refused_until_resolved():
    with pytest.raises(ConfigError, match="preprocess.color: 'auto' must be resolved"):
        _ = _params().preprocess.channels
    with pytest.raises(ConfigError, match="validate.labels: 'auto' must be resolved"):
        _ = _params().validate_.classes


@pytest.mark.skipif(not (SHARED_DATASETS / "blood_cells_pbc").is_dir(), reason="needs ../shared/datasets")
def test_the_real_sets_get_their_colour():
    stained = resolve(_params(), SHARED_DATASETS / "blood_cells_pbc").params
    xray = resolve(_params(), SHARED_DATASETS / "chest_xray_kermany224").params
    assert stained.preprocess.color == "rgb"
    assert len(stained.validate_.classes) == 8
    assert xray.preprocess.color == "gray"
    assert xray.validate_.classes == ["NORMAL", "PNEUMONIA"]
