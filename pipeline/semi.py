"""Learning from unlabelled images by pseudo-labelling (params `semi`).

A teacher trained on the labelled train split predicts the unlabelled pool (preprocess's `pool` split:
the images validation let through, pool.csv). The pool images whose top softmax probability reaches
`semi.threshold` join the train split with the teacher's class as their label (always augmented); a
student, from the same initial weights and on the same schedule, trains on both and teaches the next round.
Every part is a function of the data and params, so a run is deterministic and resumes like any other.
"""

from typing import NamedTuple

import numpy as np

from pipeline.shards import ArrayShards, Shards

POOL = "pool"  # the preprocess split holding the usable unlabelled images


class Pseudo(NamedTuple):
    """The pool images a teacher is sure of: positions in the pool split, their classes and confidences."""

    positions: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray


def confident(proba: np.ndarray, threshold: float) -> Pseudo:
    """The rows whose top class probability reaches `threshold`, with that class.

    Args:
        proba: (N, classes) probabilities of the pool images.
        threshold: The confidence an image needs (0-1].

    Returns:
        The picked positions (ascending), their classes and top probabilities.
    """
    proba = np.asarray(proba, dtype=np.float64)
    top = proba.max(axis=1) if len(proba) else np.zeros(0)
    positions = np.flatnonzero(top >= threshold)
    return Pseudo(positions, proba[positions].argmax(axis=1).astype(np.int64), top[positions])


def predict_pool(model, pool: Shards | ArrayShards, batch: int = 1024) -> np.ndarray:
    """Class probabilities of every pool image, read a chunk at a time (a pool of any size).

    Args:
        model: The Keras model.
        pool: The pool split.
        batch: Images read per chunk.

    Returns:
        (N, classes) float64 probabilities.
    """
    from pipeline.model import predict_uint8

    parts = [
        predict_uint8(model, pool.take(np.arange(i, min(i + batch, len(pool))))) for i in range(0, len(pool), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, int(model.output_shape[-1])))


def student_plan(plan: tuple[np.ndarray, np.ndarray], n_train: int, n_picked: int) -> tuple[np.ndarray, np.ndarray]:
    """The balance step's plan over the train split, then each picked pool image once, augmented.

    Args:
        plan: (index into the train split, augment flags) from the balance step.
        n_train: Images in the train split (where the picked ones start in JoinedShards).
        n_picked: Picked pool images.

    Returns:
        (index into the joined split, augment flags).
    """
    index = np.concatenate([plan[0].astype(np.int64), n_train + np.arange(n_picked, dtype=np.int64)])
    flags = np.concatenate([plan[1].astype(bool), np.ones(n_picked, dtype=bool)])
    return index, flags


def round_summary(pseudo: Pseudo, classes: list[str], n_pool: int, threshold: float, round_: int) -> dict:
    """What one round picked, for the run's artifacts, tags and the model card (counts only, no paths).

    Args:
        pseudo: The picked pool images.
        classes: The class names, in class order.
        n_pool: Images in the pool.
        threshold: The confidence they needed.
        round_: The round (1: the first student).

    Returns:
        {"round", "threshold", "pool", "picked", "per_class", "mean_confidence"}.
    """
    counts = np.bincount(pseudo.labels, minlength=len(classes)) if len(pseudo.labels) else np.zeros(len(classes))
    return {
        "round": round_,
        "threshold": threshold,
        "pool": int(n_pool),
        "picked": int(len(pseudo.positions)),
        "per_class": {c: int(n) for c, n in zip(classes, counts)},
        "mean_confidence": round(float(pseudo.confidence.mean()), 4) if len(pseudo.confidence) else None,
    }
