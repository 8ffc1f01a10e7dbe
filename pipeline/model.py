"""Model architectures, built by name from params.model; every model starts with its normalisation.

Inputs are images scaled to [0, 1]. The first layer, `Standardize`, applies the normalisation chosen
in params.preprocess (`unit`, per-image `zscore`, or the train split's `dataset` mean/std), so a saved
model carries it: serving and evaluation cannot drift from training.
"""

from pathlib import Path

import keras
import numpy as np
from keras import layers

from pipeline.config import ModelParams
from pipeline.errors import ConfigError

APPLICATIONS = {  # params name -> keras.applications constructor, extra keyword arguments
    "efficientnet_b0": ("EfficientNetB0", {}),
    "resnet50": ("ResNet50", {}),
    "mobilenet_v3_small": ("MobileNetV3Small", {"include_preprocessing": False, "minimalistic": False}),
}


@keras.saving.register_keras_serializable(package="medpipe")
class Standardize(layers.Layer):
    """Normalise [0, 1] images: `unit` (as is), `zscore` (per image) or `dataset` ((x - mean) / std)."""

    def __init__(self, mode: str = "unit", mean: float = 0.0, std: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode, self.mean, self.std = mode, float(mean), float(std)

    def call(self, x):
        """Normalise a batch.

        Args:
            x: (batch, h, w, channels) images in [0, 1].

        Returns:
            The normalised batch (as is for `unit`).
        """
        ops = keras.ops
        if self.mode == "zscore":
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            return (x - mean) / ops.maximum(ops.std(x, axis=(1, 2, 3), keepdims=True), 1e-3)
        if self.mode == "dataset":
            return (x - self.mean) / max(self.std, 1e-3)
        return x

    def get_config(self) -> dict:
        """The layer's config for saving.

        Returns:
            Keras' layer config plus mode, mean and std.
        """
        return {**super().get_config(), "mode": self.mode, "mean": self.mean, "std": self.std}


def seed_cnn(inputs, n_classes: int, model_params: ModelParams, base: Path):
    """The seed CNN, exactly: Conv32-Pool-Conv64-Pool-Dense128-softmax.

    Args:
        inputs: The normalised input tensor.
        n_classes: Number of classes (the head is added by build_model).
        model_params: The model section (unused: the seed CNN is fixed).
        base: The project folder (unused).

    Returns:
        The 128-unit feature tensor before the softmax head.
    """
    x = layers.Conv2D(32, 3, activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dense(128, activation="relu")(layers.Flatten()(x))
    return x


def _residual(x, filters: int, stride: int):
    """Two 3x3 conv + batch-norm layers with an identity (or 1x1 projection) shortcut."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.BatchNormalization()(layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x))
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = layers.Activation("relu")(layers.BatchNormalization()(y))
    y = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
    return layers.Activation("relu")(layers.Add()([y, shortcut]))


def resnet_small(inputs, n_classes: int, model_params: ModelParams, base: Path):
    """A small ResNet: a 3x3 stem, residual stages of 32, 64 and 128 filters, global pooling, dropout.

    Args:
        inputs: The normalised input tensor.
        n_classes: Number of classes (the head is added by build_model).
        model_params: The model section (dropout).
        base: The project folder (unused).

    Returns:
        The pooled feature tensor after dropout.
    """
    x = layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs)
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    for filters, stride in ((32, 1), (64, 2), (128, 2)):
        x = _residual(x, filters, stride)
    return layers.Dropout(model_params.dropout)(layers.GlobalAveragePooling2D()(x))


def application(inputs, n_classes: int, model_params: ModelParams, base: Path):
    """A keras.applications backbone: random weights, or a local weights file (never downloaded).

    Args:
        inputs: The normalised input tensor.
        n_classes: Number of classes (the head is added by build_model).
        model_params: The model section (name, weights, dropout).
        base: The project folder a relative weights path is resolved against.

    Returns:
        The pooled feature tensor after dropout.

    Raises:
        ConfigError: model.weights names a file that does not exist.
    """
    name, extra = APPLICATIONS[model_params.name]
    found = model_params.weights_path(base)
    weights = None if found is None or found.suffix == ".npz" else str(found)  # .npz: a medpipe encoder, later
    x = inputs
    if weights is not None and inputs.shape[-1] == 1:
        x = layers.Concatenate()([x, x, x])  # pretrained backbones expect three channels
    if model_params.name == "efficientnet_b0":
        x = layers.Rescaling(255.0)(x)  # EfficientNet rescales 0-255 inputs itself
    # built on our tensor, so its layers join this model's graph (Grad-CAM can reach its last conv layer)
    backbone = getattr(keras.applications, name)(include_top=False, weights=weights, input_tensor=x, **extra)
    return layers.Dropout(model_params.dropout)(layers.GlobalAveragePooling2D()(backbone.output))


def encoder_of(model: keras.Model) -> keras.Model:
    """The model up to its classifier: the features its `probabilities` layer reads (weights shared).

    Args:
        model: A model from build_model (or loaded).

    Returns:
        The encoder, named `encoder`.
    """
    return keras.Model(model.input, model.get_layer("probabilities").input, name="encoder")


def load_encoder(model: keras.Model, path: Path) -> dict:
    """Set a model's encoder weights from an encoder file made for the same architecture and input.

    Args:
        model: A model from build_model.
        path: The .npz file (save_encoder).

    Returns:
        The file's description.

    Raises:
        ConfigError: The file is not an encoder file, or was made for another architecture or input.
    """
    from pipeline.weights import read_encoder

    about, weights = read_encoder(path)
    encoder = encoder_of(model)
    shape = list(model.input_shape[1:])
    if about.get("architecture") != model.name or about.get("input_shape") != shape:
        made = f"{about.get('architecture')} {about.get('input_shape')}"
        raise ConfigError(path, f"encoder made for {made}, not for {model.name} {shape}")
    expected = [tuple(w.shape) for w in encoder.get_weights()]
    if [tuple(w.shape) for w in weights] != expected:
        raise ConfigError(path, f"encoder weights do not fit {model.name} {shape} ({len(weights)} arrays)")
    encoder.set_weights(weights)
    return about


def load_model(path: Path) -> keras.Model:
    """Load a saved .keras model (Standardize is registered by importing this module).

    Args:
        path: The .keras file.

    Returns:
        The model, uncompiled.
    """
    return keras.models.load_model(path, compile=False)


def input_params(model: keras.Model, preprocessing):
    """PreprocessParams adjusted to what a trained model takes (its input size and channels).

    Args:
        model: A built or loaded Keras model.
        preprocessing: The preprocessing to adjust.

    Returns:
        A copy with `size` and `color` from the model's input shape.
    """
    _, size, _, channels = model.input_shape
    return preprocessing.model_copy(update={"size": int(size), "color": "gray" if channels == 1 else "rgb"})


ARCHITECTURES = {"seed_cnn": seed_cnn, "resnet_small": resnet_small, **{name: application for name in APPLICATIONS}}


def build_model(
    model_params: ModelParams,
    input_shape: tuple[int, int, int],
    n_classes: int,
    norm: tuple[str, float, float] = ("unit", 0.0, 1.0),
    base: Path = Path("."),
) -> keras.Model:
    """Build an (uncompiled) model by its params name: Standardize, the body, a float32 softmax head.

    Args:
        model_params: The model section (which architecture).
        input_shape: (size, size, channels).
        n_classes: Number of classes.
        norm: Standardize's (mode, mean, std).
        base: The project folder (local weights files).

    Returns:
        The Keras model, named after the architecture.

    Raises:
        ConfigError: model.weights names a file that does not exist, or an encoder file that does not fit.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = Standardize(*norm, name="standardize")(inputs)
    features = ARCHITECTURES[model_params.name](x, n_classes, model_params, base)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(features)
    model = keras.Model(inputs, outputs, name=model_params.name)
    found = model_params.weights_path(base)
    if found is not None and found.suffix == ".npz":  # a medpipe encoder (pretrain), for the architecture that made it
        load_encoder(model, found)
    elif found is not None and model_params.name not in APPLICATIONS:
        raise ConfigError(found, f"{model_params.name} takes only a medpipe encoder file (.npz) as model.weights")
    return model


def predict_uint8(model, x: np.ndarray, batch: int = 128) -> np.ndarray:
    """Class probabilities for uint8 images, batch by batch (memory stays small), float64.

    Args:
        model: The Keras model.
        x: uint8 images (N, size, size, channels).
        batch: Images per forward pass.

    Returns:
        (N, classes) float64 probabilities.
    """
    parts = [
        np.asarray(model(x[i : i + batch].astype(np.float32) / 255.0, training=False), dtype=np.float64)
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]))


def predict(model, x: np.ndarray) -> np.ndarray:
    """Class probabilities of uint8 images, batch by batch (a float copy of one batch at a time), as float64
    rows summing to 1 (float32 softmax is off by ~1e-7).

    Args:
        model: The Keras model.
        x: uint8 images (N, size, size, channels).

    Returns:
        (N, classes) float64 probabilities, rows renormalised.
    """
    proba = predict_uint8(model, x)
    return proba / proba.sum(axis=1, keepdims=True)
