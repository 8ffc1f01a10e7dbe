import numpy as np
import pytest

from pipeline.config import ModelParams
from pipeline.errors import ConfigError
from pipeline.model import APPLICATIONS, Standardize, build_model, load_model


def _kinds(model) -> list[tuple[str, int | None]]:
    return [
        (type(layer).__name__, getattr(layer, "filters", None) or getattr(layer, "units", None))
        for layer in model.layers
    ]


def test_seed_cnn_is_the_seed_architecture():
    model = build_model(ModelParams(), (28, 28, 1), 3)
    assert _kinds(model)[2:] == [
        ("Conv2D", 32),
        ("MaxPooling2D", None),
        ("Conv2D", 64),
        ("MaxPooling2D", None),
        ("Flatten", None),
        ("Dense", 128),
        ("Dense", 3),
    ]
    assert model.layers[1].name == "standardize"  # normalisation travels with the model
    assert model.layers[2].kernel_size == (3, 3)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.output_shape == (None, 3)


def test_resnet_small_has_residual_blocks_batch_norm_and_dropout():
    model = build_model(ModelParams(name="resnet_small", dropout=0.25), (32, 32, 1), 2)
    kinds = {kind for kind, _ in _kinds(model)}
    assert {"Add", "BatchNormalization", "Dropout", "GlobalAveragePooling2D"} <= kinds
    assert model.get_layer(index=-2).rate == 0.25
    assert model.output_shape == (None, 2)


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_applications_build_without_downloading(name):
    model = build_model(ModelParams(name=name), (32, 32, 1), 3)  # weights: null, gray input as is
    proba = np.asarray(model(np.random.default_rng(0).uniform(size=(2, 32, 32, 1)).astype("float32")))
    assert proba.shape == (2, 3)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_application_loads_a_local_weights_file(tmp_path):
    import keras

    backbone = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), include_preprocessing=False
    )
    backbone.save_weights(tmp_path / "mobilenet.weights.h5")
    model = build_model(
        ModelParams(name="mobilenet_v3_small", weights="mobilenet.weights.h5"), (32, 32, 1), 2, base=tmp_path
    )
    first_conv = next(layer for layer in model.layers if type(layer).__name__ == "Conv2D")
    assert first_conv.kernel.shape[2] == 3  # gray tiled to the three channels the weights expect
    assert np.array_equal(np.asarray(first_conv.kernel), np.asarray(backbone.get_layer(first_conv.name).kernel))
    with pytest.raises(ConfigError, match="never downloaded"):
        build_model(ModelParams(name="resnet50", weights="missing.h5"), (32, 32, 1), 2, base=tmp_path)


def test_standardize_modes_and_round_trip(tmp_path):
    x = np.random.default_rng(1).uniform(0.2, 0.6, size=(3, 16, 16, 1)).astype("float32")
    z = np.asarray(Standardize("zscore")(x))
    assert np.allclose(z.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    assert np.allclose(z.std(axis=(1, 2, 3)), 1, atol=1e-3)
    assert np.allclose(np.asarray(Standardize("dataset", 0.4, 0.1)(x)), (x - 0.4) / 0.1, atol=1e-5)
    assert np.array_equal(np.asarray(Standardize("unit")(x)), x)
    model = build_model(ModelParams(), (16, 16, 1), 2, ("dataset", 0.4, 0.1))
    model.save(tmp_path / "m.keras")
    assert np.allclose(np.asarray(load_model(tmp_path / "m.keras")(x)), np.asarray(model(x)), atol=1e-6)


def test_mixed_precision_keeps_float32_probabilities():
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(ModelParams(name="resnet_small"), (16, 16, 1), 2)
        assert model.layers[2].compute_dtype == "float16"
        assert model.layers[-1].compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
