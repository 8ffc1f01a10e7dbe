"""Class balancing: a sampling plan (which training images, which of them augmented) and class weights.

The plan is small (two integer/bool arrays); the pixels stay in the preprocess shards. Augmented
copies are made on the fly by training's input pipeline (`pipeline.augment`), with randomness seeded by
(seed, epoch, batch): the same plan and seed give the same images on every run and after a resume.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.config import BalanceParams, Params, Workspace
from pipeline.outputs import read_result, replace_dir
from pipeline.preprocess import PreprocessResult
from pipeline.shards import Shards


@dataclass(frozen=True)
class BalanceResult:
    """Class counts before and after, where the plan is, and the class weights training uses (or None)."""

    plan: Path
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    class_weight: dict[int, float] | None


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Weights n / (k * count_c), so every class contributes equally to the loss.

    Args:
        y: Class indices.
        n_classes: How many classes (k).

    Returns:
        Weight by class index (0.0 for a class with no image).
    """
    counts = np.bincount(y, minlength=n_classes)
    return {c: float(len(y) / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}


def oversample_plan(y: np.ndarray, target_ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every image once, plus randomly drawn copies of each smaller class until it has
    `target_ratio` x the largest class's count. Returns (index into the split, is-a-copy flags).

    Args:
        y: Class indices.
        target_ratio: Each smaller class is filled up to this fraction of the largest.
        rng: Draws the copies.

    Returns:
        (index into the split, is-a-copy flags).
    """
    counts = np.bincount(y)
    target = math.ceil(target_ratio * counts.max())
    extra = [rng.choice(np.flatnonzero(y == c), size=target - n) for c, n in enumerate(counts) if 0 < n < target]
    index = np.concatenate([np.arange(len(y)), *extra]).astype(np.int64)
    return index, np.arange(len(index)) >= len(y)


def make_plan(y: np.ndarray, balancing: BalanceParams, n_classes: int) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """The sampling plan for a strategy: (index, augment flags, class weights or None).

    Args:
        y: The train split's class indices.
        balancing: The balance params (strategy, target_ratio, seed, augment_originals).
        n_classes: How many classes.

    Returns:
        (index, augment flags, class weights or None).
    """
    if balancing.strategy.startswith("oversample"):
        index, copies = oversample_plan(y, balancing.target_ratio, np.random.default_rng(balancing.seed))
    else:
        index, copies = np.arange(len(y), dtype=np.int64), np.zeros(len(y), dtype=bool)
    augment = copies | balancing.augment_originals
    weights = class_weights(y[index], n_classes) if balancing.strategy.endswith("class_weight") else None
    return index, augment, weights


def _counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    return {c: int(n) for c, n in zip(classes, np.bincount(y, minlength=len(classes)))}


def run_step(params: Params, ws: Workspace, prepared: PreprocessResult) -> BalanceResult:
    """Write the training plan to outputs/balance/{plan.npz,balance.json}.

    Args:
        params: The run's params (balance).
        ws: The workspace (writes outputs/balance).
        prepared: The preprocess step's result (the train shards).

    Returns:
        The class counts before and after, the plan's path and the class weights.
    """
    y = Shards(prepared.folder, "train").labels
    classes = prepared.classes
    index, augment, weights = make_plan(y, params.balance, len(classes))
    final = ws.out / "balance"
    result = BalanceResult(final / "plan.npz", _counts(y, classes), _counts(y[index], classes), weights)
    summary = {k: v for k, v in asdict(result).items() if k != "plan"}
    with replace_dir(final) as out:
        np.savez(out / "plan.npz", index=index, augment=augment)
        (out / "balance.json").write_text(
            json.dumps({"strategy": params.balance.strategy, "augmented": int(augment.sum()), **summary}, indent=2)
            + "\n"
        )
    return result


def load_result(ws: Workspace) -> BalanceResult:
    """Read back what run_step wrote (for a step run on its own, e.g. by DVC).

    Args:
        ws: The workspace (reads outputs/balance/balance.json).

    Returns:
        The BalanceResult run_step returned.

    Raises:
        MedpipeError: No training plan has been made in this workspace.
    """
    folder = ws.out / "balance"

    def build(raw: dict) -> BalanceResult:
        weights = {int(k): v for k, v in raw["class_weight"].items()} if raw["class_weight"] else None
        return BalanceResult(folder / "plan.npz", raw["counts_before"], raw["counts_after"], weights)

    return read_result(folder / "balance.json", "balance", build)


def load_plan(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(index, augment flags) from plan.npz (no pickles).

    Args:
        path: The plan.npz file.

    Returns:
        (index, augment flags).
    """
    with np.load(path, allow_pickle=False) as f:
        return f["index"], f["augment"]
