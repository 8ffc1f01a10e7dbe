"""Which Keras backend runs the model: TensorFlow (the default) or JAX.

Keras reads its backend once, when it is first imported (`KERAS_BACKEND`), so a step selects it before it
touches Keras. The saved `.keras` file does not depend on the backend: a model trained on one loads and
predicts on the other. Importing this module imports neither Keras nor a backend.
"""

import os
import random
import sys
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from pipeline.errors import ConfigError

BACKENDS = ("tensorflow", "jax")
AUTO = "auto"
ENV = "KERAS_BACKEND"
# What a served model needs beside Keras for each backend (pip distribution names; the first one that is
# installed of each group is pinned): the CPU and CUDA builds of TensorFlow both provide `tensorflow`.
REQUIREMENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "tensorflow": (("tensorflow-cpu", "tensorflow"),),
    "jax": (("jax",), ("jaxlib",)),
}


def resolve(choice: str) -> str:
    """The backend a run uses: `train.backend`, or for `auto` the `KERAS_BACKEND` variable, else TensorFlow.

    Args:
        choice: `train.backend` (auto, tensorflow or jax).

    Returns:
        tensorflow or jax.

    Raises:
        ConfigError: `auto` and KERAS_BACKEND names a backend medpipe does not train on (e.g. torch).
    """
    if choice != AUTO:
        return choice
    wanted = os.environ.get(ENV, "").strip()
    if wanted and wanted not in BACKENDS:
        raise ConfigError("train.backend", f"KERAS_BACKEND={wanted} is not one of {', '.join(BACKENDS)}")
    return wanted or "tensorflow"


def active() -> str | None:
    """The backend of the Keras already imported in this process, or None before the first import.

    Returns:
        The Keras backend's name, or None.
    """
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None and hasattr(keras, "backend") else None


def select(choice: str) -> str:
    """Make `choice` this process's Keras backend (before Keras is imported), or check that it already is.

    Args:
        choice: `train.backend` (auto, tensorflow or jax).

    Returns:
        The backend in use: tensorflow or jax.

    Raises:
        ConfigError: Keras already runs on another backend in this process (it cannot switch), or `auto`
            names an unsupported one.
    """
    name, current = resolve(choice), active()
    if current is None:
        os.environ[ENV] = name
    elif current != name:
        raise ConfigError(
            "train.backend",
            f"{name} asked for, but Keras already runs on {current} in this process: run medpipe again with "
            f"KERAS_BACKEND={name}",
        )
    return name


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, Keras's global seed generator and the backend (TensorFlow's seed only when it runs).

    keras.utils.set_random_seed seeds TensorFlow whenever it is installed, which imports it into a JAX run.

    Args:
        seed: The seed.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    # what keras.utils.set_random_seed does, less `tf.random.set_seed`
    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def requirements(name: str) -> list[str]:
    """Pinned pip requirements of the backend `name`, as installed here.

    Args:
        name: tensorflow or jax.

    Returns:
        `dist==version` lines (a group with nothing installed is left out).
    """
    pins = []
    for group in REQUIREMENTS[name]:
        for dist in group:
            try:
                pins.append(f"{dist}=={version(dist)}")
                break
            except PackageNotFoundError:
                continue
    return pins


def gpus(name: str) -> list:
    """The GPUs the backend sees (empty on CPU); on TensorFlow this initialises no GPU.

    Args:
        name: tensorflow or jax.

    Returns:
        Device handles (TensorFlow PhysicalDevice or JAX Device).
    """
    if name == "tensorflow":
        import tensorflow as tf

        return list(tf.config.list_physical_devices("GPU"))
    import jax

    try:
        return list(jax.devices("gpu"))
    except RuntimeError:  # no GPU backend in this jaxlib
        return []
