"""Learning from unlabelled images by pseudo-labelling (params `semi`).

A teacher trained on the labelled train split predicts the unlabelled pool (preprocess's `pool` split:
the images validation let through, pool.csv). The pool images it picks (`semi.criterion`: those whose top
softmax probability reaches `semi.threshold`, or the most confident `semi.share` of each class it assigns)
join the train split with the teacher's class as their label (always augmented); a student, from the same
initial weights and on the same schedule, trains on both and teaches the next round.
Every part is a function of the data and params, so a run is deterministic and resumes like any other.
"""

from typing import NamedTuple

import numpy as np

from pipeline.config import SemiParams
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


def class_share(proba: np.ndarray, share: float) -> Pseudo:
    """The most confident `share` of the rows each class is the top class of (rounded up), with that class.

    Ties in confidence go to the earlier row, so the pick is a function of `proba` alone.

    Args:
        proba: (N, classes) probabilities of the pool images.
        share: The part of each class's rows picked (0-1].

    Returns:
        The picked positions (ascending), their classes and top probabilities.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if not len(proba):
        return confident(proba, 1.0)
    top, label = proba.max(axis=1), proba.argmax(axis=1)
    order = np.lexsort((np.arange(len(proba)), -top, label))  # by class, then most confident, then position
    counts = np.bincount(label, minlength=proba.shape[1])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(proba), dtype=np.int64)
    rank[order] = np.arange(len(proba)) - np.repeat(starts, counts)  # place within its class, 0: most sure
    keep = np.ceil(share * counts - 1e-9).astype(np.int64)  # share * count rounded up (not 0.2 * 5 -> 2)
    positions = np.flatnonzero(rank < keep[label])
    return Pseudo(positions, label[positions].astype(np.int64), top[positions])


def pick(proba: np.ndarray, params: SemiParams, round_: int) -> Pseudo:
    """The pool images a round's teacher labels, by `semi.criterion`.

    Args:
        proba: (N, classes) the teacher's probabilities of the pool images.
        params: The semi params.
        round_: The round (1: the first student): class_share takes share * round_ of each class (at most all).

    Returns:
        The picked positions (ascending), their classes and top probabilities.
    """
    if params.criterion == "class_share":
        return class_share(proba, _round_share(params, round_))
    return confident(proba, params.threshold)


def _round_share(params: SemiParams, round_: int) -> float:
    """class_share's share in a round: share * round, at most all."""
    return min(1.0, params.share * round_)


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


def _rule(params: SemiParams, round_: int) -> dict:
    if params.criterion == "class_share":
        return {"criterion": "class_share", "share": round(_round_share(params, round_), 4)}
    return {"criterion": "threshold", "threshold": params.threshold}


def round_summary(pseudo: Pseudo, classes: list[str], n_pool: int, params: SemiParams, round_: int) -> dict:
    """What one round picked, for the run's artifacts, tags and the model card (counts only, no paths).

    Args:
        pseudo: The picked pool images.
        classes: The class names, in class order.
        n_pool: Images in the pool.
        params: The semi params (how they were picked).
        round_: The round (1: the first student).

    Returns:
        {"round", "criterion", "threshold" or "share" (this round's), "pool", "picked", "per_class",
        "mean_confidence"}.
    """
    counts = np.bincount(pseudo.labels, minlength=len(classes)) if len(pseudo.labels) else np.zeros(len(classes))
    return {
        "round": round_,
        **_rule(params, round_),
        "pool": int(n_pool),
        "picked": int(len(pseudo.positions)),
        "per_class": {c: int(n) for c, n in zip(classes, counts)},
        "mean_confidence": round(float(pseudo.confidence.mean()), 4) if len(pseudo.confidence) else None,
    }


def picked_by(summary: dict) -> str:
    """How a round's images were picked, in words (for the run's tag and the model card).

    Args:
        summary: A round's summary (round_summary).

    Returns:
        E.g. `at >= 0.95` or `as the most confident 40 % of each class`.
    """
    if summary.get("criterion") == "class_share":
        return f"as the most confident {_percent(summary)} of each class"
    return f"at >= {summary['threshold']}"


def share_note(summary: dict) -> str:
    """A later round's share in words, after its count in the run's tag; "" for the threshold criterion.

    Args:
        summary: A round's summary (round_summary).

    Returns:
        E.g. ` at 40 %`.
    """
    return f" at {_percent(summary)}" if summary.get("criterion") == "class_share" else ""


def _percent(summary: dict) -> str:
    return f"{100 * summary['share']:.3g} %"
