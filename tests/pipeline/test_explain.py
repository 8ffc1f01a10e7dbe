"""Grad-CAM points at the lesion: a seed CNN trained on the built-in set, nodule images explained."""

import numpy as np
import pytest

from pipeline.config import ModelParams, PreprocessParams
from pipeline.data import lesion_mask, synthesize
from pipeline.explain import grad_cam, last_conv_layer, mass_in, overlay
from pipeline.model import build_model


def test_last_conv_layer_is_found_and_required():
    import keras

    model = build_model(ModelParams(), (16, 16, 1), 2)
    assert last_conv_layer(model).name == model.layers[4].name  # standardize, conv, pool, conv
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no convolutional layer"):
        last_conv_layer(dense)


@pytest.mark.slow
def test_grad_cam_mass_sits_on_the_nodule(tmp_path):
    import keras

    from pipeline.preprocess import load_image
    from pipeline.train import configure_determinism

    manifest = synthesize(tmp_path, n_patients=200, size=48, seed=11)
    x = np.stack([load_image(tmp_path / p, PreprocessParams(size=48)) for p in manifest["path"]])
    classes = ["normal", "nodule", "effusion"]
    y = manifest["label"].map(classes.index).to_numpy()
    test = manifest["patient_id"].str[1:].astype(int) % 5 == 0  # a fifth of the patients held out
    configure_determinism(0, True)
    model = build_model(ModelParams(), (48, 48, 1), 3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    weights = {c: len(y) / (3 * (y == c).sum()) for c in range(3)}
    model.fit(x[~test], y[~test], epochs=25, batch_size=32, class_weight=weights, verbose=0)

    ratios = []
    for i in np.flatnonzero(test & (y == 1)):
        cam, proba = grad_cam(model, x[i], class_index=1)
        anatomy, lesion = manifest.attrs["findings"][manifest["path"][i]]
        mask = lesion_mask(lesion, anatomy, 48) > 0.5
        if proba.argmax() == 1:
            ratios.append(mass_in(cam, mask) / mask.mean())
    assert len(ratios) >= 5, "the model should find most held-out nodules"
    assert np.median(ratios) > 3.0, f"Grad-CAM mass on the nodule vs its area share: {np.round(ratios, 1)}"
    picture = overlay(x[i], cam)
    assert picture.shape == (48 * 4, 48 * 8, 3)
    assert picture.dtype == np.uint8


def test_captioned_overlay_keeps_low_evidence_anatomy_visible():
    from pipeline.explain import captioned

    image = np.full((16, 16, 1), 0.5, np.float32)
    cam = np.zeros((16, 16), np.float32)
    cam[:4, :4] = 1.0
    picture = overlay(image, cam, scale=4)
    base, blend = picture[:, :64], picture[:, 64:]
    assert np.array_equal(base[32:, 32:], blend[32:, 32:])  # no evidence: the anatomy untinted
    assert not np.array_equal(base[:8, :8], blend[:8, :8])
    framed = captioned(picture, ["IM-0001.jpeg", "true: nodule   predicted: nodule (p = 0.91)"])
    assert framed.shape[1] == picture.shape[1]
    assert framed.shape[0] > picture.shape[0]
    assert framed.dtype == np.uint8
