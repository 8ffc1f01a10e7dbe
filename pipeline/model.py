"""Model architectures, built by name from params.model."""

import keras


def seed_cnn(input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """The seed CNN: Conv32-Pool-Conv64-Pool-Dense128-softmax."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(n_classes, activation="softmax"),
        ],
        name="seed_cnn",
    )


ARCHITECTURES = {"seed_cnn": seed_cnn}


def build_model(name: str, input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Build an (uncompiled) architecture by its params name."""
    return ARCHITECTURES[name](input_shape, n_classes)
