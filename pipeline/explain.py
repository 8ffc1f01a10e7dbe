"""Grad-CAM explanations for any Keras conv model: where in the image the predicted class came from."""

from typing import NamedTuple

import cv2
import numpy as np


def last_conv_layer(model):
    """The last layer with a spatial (batch, h, w, channels) output: the one Grad-CAM looks at.

    Args:
        model: A built Keras model.

    Returns:
        The last convolutional layer with a 4-D output.

    Raises:
        ValueError: the model has no convolutional layer.
    """
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if shape and len(shape) == 4 and "conv" in type(layer).__name__.lower():
            return layer
    raise ValueError(f"model {model.name!r} has no convolutional layer to explain")


def _forward(model, conv, batch: np.ndarray, tape):
    """Run the model, returning (conv features, probabilities) with the features watched by the tape (if any).

    Sequential models run layer by layer (their saved graph need not expose inner outputs);
    functional models through a probe model with both outputs.
    """
    import keras

    if isinstance(model, keras.Sequential):
        x, features = batch, None
        for layer in model.layers:
            x = layer(x, training=False)
            if layer is conv:
                features = x
                if tape is not None:
                    tape.watch(features)
        return features, x
    probe = keras.Model(model.inputs[0], [conv.output, model.outputs[0]])
    features, proba = probe(batch, training=False)
    return features, proba


class GradCam(NamedTuple):
    """A Grad-CAM heat map in [0, 1] at the image's size (H, W), and the model's class probabilities."""

    heatmap: np.ndarray
    probabilities: np.ndarray


def grad_cam(model, image: np.ndarray, class_index: int | None = None) -> GradCam:
    """Grad-CAM heat map in [0, 1] at the image's size, and the model's class probabilities.

    Args:
        model: a built Keras model with at least one conv layer.
        image: one preprocessed image, (H, W, C) float32.
        class_index: the class to explain; the predicted one when None.

    Returns:
        The heat map (H, W) float32 and the class probabilities of the image.

    Raises:
        ValueError: the model has no convolutional layer.
    """
    import keras

    conv = last_conv_layer(model)
    if keras.backend.backend() != "tensorflow":
        features, grads, proba = _jax_gradients(model, conv, image[None].astype(np.float32), class_index)
        cam = np.maximum((grads * features).sum(axis=-1), 0.0)[0].astype(np.float32)
        return _scaled(cam, image, proba)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        features, proba = _forward(model, conv, image[None].astype(np.float32), tape)
        index = int(np.argmax(proba[0])) if class_index is None else class_index
        # log-probability: the softmax output saturates for confident predictions, its log does not
        score = tf.math.log(proba[:, index] + 1e-12)
    grads = tape.gradient(score, features)
    # Element-wise gradient x activation (HiResCAM), not Grad-CAM's spatially averaged gradients:
    # for Flatten+Dense heads such as the seed CNN's, averaging erases where the evidence was.
    cam = tf.nn.relu(tf.reduce_sum(grads * features, axis=-1))[0].numpy()
    return _scaled(cam, image, np.asarray(proba))


def _scaled(cam: np.ndarray, image: np.ndarray, proba: np.ndarray) -> GradCam:
    """The map at the image's size, scaled to a peak of 1, with the image's class probabilities."""
    cam = cv2.resize(cam, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    peak = float(cam.max())
    return GradCam((cam / peak if peak > 0 else cam).astype(np.float32), np.asarray(proba[0]))


def _jax_gradients(model, conv, batch: np.ndarray, class_index: int | None):
    """(conv features, d log p(class) / d features, probabilities) on the JAX backend.

    JAX differentiates functions, not watched tensors: the conv layer's output gets a zero offset for the
    length of one call, and the gradient with respect to that offset is the gradient at the features.
    """
    import jax
    import jax.numpy as jnp

    original = conv.call

    def score(offset):
        conv.call = lambda *args, **kwargs: original(*args, **kwargs) + offset
        try:
            features, proba = _forward(model, conv, batch, None)  # features: the conv output, offset included
        finally:
            vars(conv).pop("call", None)  # the class's own call again
        index = jnp.argmax(proba[0]) if class_index is None else class_index
        return jnp.log(proba[0, index] + 1e-12), (features, proba)

    shape = (1, *conv.output.shape[1:])
    grads, (features, proba) = jax.grad(score, has_aux=True)(jnp.zeros(shape, "float32"))
    return np.asarray(features), np.asarray(grads), np.asarray(proba)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.6, scale: int = 4) -> np.ndarray:
    """The image beside the same image with the heat map on top, as an enlarged BGR uint8 picture.

    The map is perceptually uniform (inferno) and blended in proportion to the evidence: where the
    model found none, the anatomy shows untinted.

    Args:
        image: One preprocessed image in [0, 1], (H, W) or (H, W, C).
        cam: Its Grad-CAM map in [0, 1], (H, W).
        alpha: Opacity of the map where the evidence is strongest.
        scale: Enlargement (nearest neighbour: pixels stay visible as pixels).

    Returns:
        (H * scale, 2 * W * scale, 3) uint8, BGR.
    """
    pixels = np.clip(image, 0, 1)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        base = cv2.cvtColor((pixels * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    else:
        gray = pixels[..., 0] if pixels.ndim == 3 else pixels
        base = cv2.cvtColor((gray * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    weight = (alpha * np.clip(cam, 0, 1))[..., None]
    blend = (heat * weight + base * (1 - weight)).round().astype(np.uint8)
    size = (blend.shape[1] * scale, blend.shape[0] * scale)
    return np.hstack(
        [
            cv2.resize(base, size, interpolation=cv2.INTER_NEAREST),
            cv2.resize(blend, size, interpolation=cv2.INTER_NEAREST),
        ]
    )


def captioned(picture: np.ndarray, lines: list[str]) -> np.ndarray:
    """An overlay with a caption above it and a colour scale of the map (low to high evidence) below.

    Args:
        picture: What `overlay` made.
        lines: Caption lines, e.g. source file, true label, prediction and its probability.

    Returns:
        The picture with the caption band and the colour scale, BGR uint8.
    """
    width, font = picture.shape[1], cv2.FONT_HERSHEY_SIMPLEX
    band = np.full((18 * len(lines) + 8, width, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(band, text[: max(8, width // 8)], (4, 18 * (i + 1)), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    ramp = np.tile(np.linspace(0, 255, width // 2).astype(np.uint8), (10, 1))
    scale = np.full((30, width, 3), 255, np.uint8)
    scale[2:12, width // 2 : width // 2 + ramp.shape[1]] = cv2.applyColorMap(ramp, cv2.COLORMAP_INFERNO)
    cv2.putText(scale, "Grad-CAM evidence: none", (4, 12), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(scale, "strongest", (width - 70, 26), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, picture, scale])


def mass_in(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heat map's total mass that falls inside a (soft) region mask.

    Args:
        cam: A heat map (H, W).
        mask: A mask in [0, 1] of the same shape.

    Returns:
        The share in [0, 1]; 0.0 for an all-zero map.
    """
    total = float(cam.sum())
    return float((cam * mask).sum() / total) if total > 0 else 0.0
