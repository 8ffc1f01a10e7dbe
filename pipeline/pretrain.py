"""Self-supervised pre-training of the encoder (params `pretrain`, off by default; SimCLR, Chen et al. 2020).

Before supervised training, the encoder (the model up to its classifier, model.encoder_of) and a projection
head (Dense-ReLU-Dense, dropped afterwards) learn from every train and pool image, labels unread: two views
of each image (`pretrain.augment`) must pick each other out among the batch's other views (the NT-Xent loss
at `pretrain.temperature`). The encoder's weights are kept as a NumPy file (pipeline.weights.save_encoder, no pickle)
that the run's classifier starts from and that a later run reuses through `model.weights`. Batches are a
pure function of (seed, epoch, batch), written once for both backends, so pre-training is deterministic and
resumes like supervised training. A k-nearest-neighbour probe (features of the labelled train images
voting for the val images' classes) says, before and after, whether the features learnt anything.
"""

import functools
import math
from typing import Any

import numpy as np

from pipeline.augment import augments
from pipeline.config import PretrainParams
from pipeline.consistency import view, wrapped
from pipeline.feed import _on_device
from pipeline.shards import Split

VIEW_STREAMS = (11, 13)  # the two views' seed words (beside augment's, the feeds' and consistency's)
ORDER_STREAM = 17  # the epoch order's seed word
HIDDEN = 128  # the projection head's hidden units


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Batches in a pre-training epoch: one pass over the images, the last batch wrapping to the start.

    Args:
        n_images: Train and pool images.
        batch_size: pretrain.batch_size.

    Returns:
        The number of batches (at least 1).
    """
    return max(math.ceil(n_images / batch_size), 1)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of the train and pool images that pre-training epoch `epoch` reads them in.

    Args:
        seed: train.seed.
        epoch: The epoch.
        n: Images.

    Returns:
        A permutation of range(n), int64.
    """
    return np.random.default_rng([seed, epoch, 2**32 - 1, ORDER_STREAM]).permutation(n)


def pretrain_feed(
    images: Split, pretraining: PretrainParams, seed: int, in_memory_mb: int, start_epoch: int = 0
) -> tuple[Any, int]:
    """Batches of (view 1 | view 2 of the same images, zeros) for epochs start_epoch..pretraining.epochs-1,
    as one Keras PyDataset (any backend): each epoch a seeded permutation of `images`, full batches of
    `pretraining.batch_size` images (the last wrapping to the start).

    Args:
        images: What to learn from, e.g. the train split joined with the pool (shards.JoinedShards); labels
            are not read.
        pretraining: The pretrain params (epochs, batch_size, augment).
        seed: train.seed.
        in_memory_mb: Up to this size the images are read into memory, else they stream from their shards.
        start_epoch: The first epoch (a resumed run's).

    Returns:
        (the PyDataset, steps per epoch).
    """
    import keras
    from keras import ops

    n = len(images)
    batch = min(pretraining.batch_size, max(n, 1))
    steps = steps_per_epoch(n, batch)
    table = images.read() if images.nbytes <= in_memory_mb * 2**20 else None
    scale = _on_device(None)
    fn = _on_device(pretraining.augment) if augments(pretraining.augment) else None
    every = np.ones(batch, dtype=bool)
    dummy = np.zeros((2 * batch, 1), dtype=np.float32)

    class PretrainFeed(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.orders: dict[int, np.ndarray] = {}

        def __len__(self) -> int:
            return steps * (pretraining.epochs - start_epoch)

        def __getitem__(self, i: int):
            epoch, b = start_epoch + i // steps, i % steps
            order = self.orders.get(epoch)
            if order is None:
                order = epoch_order(seed, epoch, n)
                self.orders = {epoch: order}  # one epoch at a time
            rows = wrapped(order, b, batch)
            x = table[rows] if table is not None else images.take(rows)
            at = (seed, epoch, b)
            first = view(x, every, pretraining.augment, fn, scale, at, VIEW_STREAMS[0])
            second = view(x, every, pretraining.augment, fn, scale, at, VIEW_STREAMS[1])
            return ops.concatenate([first, second], axis=0), dummy

    return PretrainFeed(), steps


@functools.cache
def registered() -> type:
    """The NT-Xent loss class, registered with Keras once per process (a checkpoint's model.keras names it).

    Returns:
        NTXentLoss.
    """
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="medpipe")
    class NTXentLoss(keras.losses.Loss):
        """SimCLR's loss: each of 2B projections (view 1 rows, then view 2 rows) classifies its partner among
        the other 2B - 1 by cosine similarity / temperature; the labels are not read."""

        def __init__(
            self, temperature: float = 0.2, name: str = "nt_xent", reduction: str = "sum_over_batch_size", dtype=None
        ) -> None:
            super().__init__(name=name, reduction=reduction, dtype=dtype)
            self.temperature = temperature

        def call(self, y_true, y_pred):
            z = ops.cast(y_pred, "float32")
            z = z / ops.maximum(ops.sqrt(ops.sum(z * z, axis=-1, keepdims=True)), 1e-12)
            n = ops.shape(z)[0]
            half = n // 2
            logits = ops.matmul(z, ops.transpose(z)) / self.temperature
            logits = logits - 1e9 * ops.eye(n, dtype=logits.dtype)  # a view is not its own partner
            partner = ops.one_hot(ops.concatenate([ops.arange(half) + half, ops.arange(half)]), n, dtype="float32")
            log_p = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
            return -ops.sum(partner * log_p, axis=-1)

        def get_config(self) -> dict:
            return {**super().get_config(), "temperature": self.temperature}

    return NTXentLoss


def contrastive_model(classifier: Any, pretraining: PretrainParams, jit_compile: bool = False) -> Any:
    """The classifier's encoder (its layers shared) under a projection head, compiled with NT-Xent.

    Args:
        classifier: A model from build_model.
        pretraining: The pretrain params (projection, temperature, learning_rate).
        jit_compile: train.xla.

    Returns:
        The compiled Keras model; its layer `encoder` is the encoder.
    """
    import keras
    from keras import layers

    from pipeline.model import encoder_of

    encoder = encoder_of(classifier)
    inputs = keras.Input(shape=classifier.input_shape[1:], name="image")
    x = layers.Dense(HIDDEN, activation="relu", name="projection_hidden")(encoder(inputs))
    z = layers.Dense(pretraining.projection, dtype="float32", name="projection")(x)
    model = keras.Model(inputs, z, name="contrastive")
    model.compile(
        optimizer=keras.optimizers.Adam(pretraining.learning_rate),
        loss=registered()(pretraining.temperature),
        jit_compile=jit_compile,
    )
    return model


def knn_accuracy(
    train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray, labels: np.ndarray, k: int = 20
) -> float:
    """Accuracy of a cosine k-nearest-neighbour vote (the labelled train images' classes) on other images.

    Args:
        train_features: (N, d) features of labelled images.
        train_labels: Their class indices.
        features: (M, d) features of the images to classify.
        labels: Their class indices.
        k: Neighbours (at most N); ties go to the lowest class index.

    Returns:
        The share classified right (nan when either side is empty).
    """
    if not len(train_features) or not len(features):
        return float("nan")

    def unit(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64).reshape(len(f), -1)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    k = min(k, len(train_features))
    similarity = unit(features) @ unit(train_features).T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    n_classes = int(max(train_labels.max(), labels.max())) + 1
    votes = np.zeros((len(features), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(features)), k), np.asarray(train_labels)[nearest].ravel()), 1.0)
    return float((votes.argmax(axis=1) == np.asarray(labels)).mean())


def probe(encoder: Any, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]) -> float:
    """The k-NN probe of an encoder: labelled train features vote for the val images' classes.

    Args:
        encoder: The encoder (model.encoder_of).
        train: (uint8 images, class indices) of the labelled train images.
        val: (uint8 images, class indices) of the val images.

    Returns:
        The val accuracy of the vote.
    """
    from pipeline.model import predict_uint8

    return knn_accuracy(predict_uint8(encoder, train[0]), train[1], predict_uint8(encoder, val[0]), val[1])


def pretrain_words(about: dict) -> str:
    """The `medpipe.pretrain` tag: how the encoder was pre-trained and what the probe says.

    Args:
        about: The encoder file's description (images, epochs, temperature, loss, knn).

    Returns:
        E.g. `simclr: 1200 images, 30 epochs, temperature 0.2, loss 5.41 -> 3.02; k-NN val accuracy 0.41 -> 0.62`.
    """
    loss, knn = about.get("loss") or [float("nan")], about.get("knn", {})
    return (
        f"simclr: {about['images']} images, {about['epochs']} epochs, temperature {about['temperature']}, "
        f"loss {loss[0]:.3f} -> {loss[-1]:.3f}; k-NN val accuracy {knn.get('before', float('nan')):.3f} -> "
        f"{knn.get('after', float('nan')):.3f}"
    )
