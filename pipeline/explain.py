"""Grad-CAM explanations for any Keras conv model: where in the image the predicted class came from."""

import cv2
import numpy as np


def last_conv_layer(model):
    """The last layer with a spatial (batch, h, w, channels) output: the one Grad-CAM looks at."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if shape and len(shape) == 4 and "conv" in type(layer).__name__.lower():
            return layer
    raise ValueError(f"model {model.name!r} has no convolutional layer to explain")


def _forward(model, conv, batch: np.ndarray, tape):
    """Run the model, returning (conv features, probabilities) with the features watched by the tape.

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
                tape.watch(features)
        return features, x
    probe = keras.Model(model.inputs[0], [conv.output, model.outputs[0]])
    features, proba = probe(batch, training=False)
    return features, proba


def grad_cam(model, image: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heat map in [0, 1] at the image's size, and the model's class probabilities.

    Args:
        model: a built Keras model with at least one conv layer.
        image: one preprocessed image, (H, W, C) float32.
        class_index: the class to explain; the predicted one when None.
    """
    import tensorflow as tf

    conv = last_conv_layer(model)
    with tf.GradientTape() as tape:
        features, proba = _forward(model, conv, image[None].astype(np.float32), tape)
        index = int(np.argmax(proba[0])) if class_index is None else class_index
        # log-probability: the softmax output saturates for confident predictions, its log does not
        score = tf.math.log(proba[:, index] + 1e-12)
    grads = tape.gradient(score, features)
    # Element-wise gradient x activation (HiResCAM), not Grad-CAM's spatially averaged gradients:
    # for Flatten+Dense heads such as the seed CNN's, averaging erases where the evidence was.
    cam = tf.nn.relu(tf.reduce_sum(grads * features, axis=-1))[0].numpy()
    cam = cv2.resize(cam, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).astype(np.float32), np.asarray(proba[0])


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, scale: int = 4) -> np.ndarray:
    """The image with the heat map blended on top, as an enlarged BGR uint8 picture for a PNG."""
    gray = np.clip(image[..., 0] if image.ndim == 3 else image, 0, 1)
    base = cv2.cvtColor((gray * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    heat = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
    blend = cv2.addWeighted(heat, alpha, base, 1 - alpha, 0)
    size = (blend.shape[1] * scale, blend.shape[0] * scale)
    return np.hstack([cv2.resize(base, size, interpolation=cv2.INTER_NEAREST),
                      cv2.resize(blend, size, interpolation=cv2.INTER_NEAREST)])


def mass_in(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heat map's total mass that falls inside a (soft) region mask."""
    total = float(cam.sum())
    return float((cam * mask).sum() / total) if total > 0 else 0.0
