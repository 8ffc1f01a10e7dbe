import base64

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import ModelParams, PreprocessParams
from pipeline.errors import MedpipeError
from pipeline.model import build_model
from pipeline.preprocess import load_image
from pipeline.serving import cells, model_input, predict_table

PP = PreprocessParams(size=32, clahe={"enabled": True})


def test_every_input_form_gives_the_training_pixels(tiny_data):
    path = next((tiny_data / "images/nodule").glob("*.png"))
    raw = path.read_bytes()
    expected = load_image(path, PP)  # what training saw for this file
    assert np.array_equal(model_input(raw, 0, PP), expected)
    assert np.array_equal(model_input(base64.b64encode(raw).decode(), 0, PP), expected)
    pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(model_input(pixels, 0, PP), expected)
    assert np.array_equal(model_input(pixels / 255.0, 0, PP), expected)
    assert np.array_equal(model_input(np.stack([pixels] * 3, axis=2), 0, PP), expected)  # RGB of a gray image


def test_bad_cells_name_the_row_and_the_reason():
    with pytest.raises(MedpipeError, match=r"image\[3\]: not a decodable image"):
        model_input(b"not an image", 3, PP)
    with pytest.raises(MedpipeError, match=r"image\[1\]: a string must be a base64"):
        model_input("%%% not base64", 1, PP)
    with pytest.raises(MedpipeError, match=r"image\[0\]: expected image bytes"):
        model_input(np.zeros(5), 0, PP)
    with pytest.raises(MedpipeError, match="expected a column named 'image'"):
        cells(pd.DataFrame({"picture": [b""]}))


def test_predict_table_has_labels_and_probabilities(tiny_data):
    model = build_model(ModelParams(), (32, 32, 1), 3)
    files = sorted((tiny_data / "images").rglob("*.png"))[:4]
    table = predict_table(model, ["normal", "nodule", "effusion"], [f.read_bytes() for f in files], PP)
    assert list(table.columns) == ["label", "normal", "nodule", "effusion"]
    assert len(table) == 4
    assert np.allclose(table[["normal", "nodule", "effusion"]].sum(axis=1), 1, atol=1e-5)
    assert (table["label"] == table[["normal", "nodule", "effusion"]].idxmax(axis=1)).all()


def test_predict_files_gives_what_the_table_gives_for_the_same_files(tiny_data):
    from types import SimpleNamespace

    from pipeline.serving import predict_files

    model = build_model(ModelParams(), (32, 32, 1), 3)
    classes = ["normal", "nodule", "effusion"]
    files = sorted((tiny_data / "images").rglob("*.png"))[:3]
    rows = predict_files(SimpleNamespace(model=model, classes=classes, pp=PP), files)
    table = predict_table(model, classes, [f.read_bytes() for f in files], PP)
    assert [r["image"] for r in rows] == [str(f) for f in files]
    assert [r["label"] for r in rows] == table["label"].tolist()
    for row, (_, expected) in zip(rows, table.iterrows()):
        assert row["probabilities"] == {c: round(float(expected[c]), 4) for c in classes}


def test_a_model_logged_before_reduced_jpeg_decoding_keeps_the_full_decode():
    from pipeline.serving import served_preprocessing

    old = PreprocessParams().model_dump(mode="json", exclude={"jpeg_reduced"})  # a serving.json of before
    assert served_preprocessing(old).jpeg_reduced is False
    assert served_preprocessing(PreprocessParams().model_dump(mode="json")).jpeg_reduced is True
