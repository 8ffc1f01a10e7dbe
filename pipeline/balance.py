"""Class balancing: class weights, or oversampling minority classes with augmented copies."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import Params, Workspace
from pipeline.preprocess import load_dataset


@dataclass(frozen=True)
class BalanceResult:
    """Class counts before and after, and the class weights training should use (or None)."""

    train: Path
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    class_weight: dict[int, float] | None


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Weights n / (k * count_c), so every class contributes equally to the loss."""
    counts = np.bincount(y, minlength=n_classes)
    return {c: float(len(y) / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}


def augment(img: np.ndarray, rng: np.random.Generator, max_rotation: float) -> np.ndarray:
    """One augmented copy of an (H, W, 1) image: random horizontal flip and small rotation."""
    out = img[:, ::-1] if rng.uniform() < 0.5 else img
    h, w = out.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-max_rotation, max_rotation), 1.0)
    rotated = cv2.warpAffine(np.ascontiguousarray(out[:, :, 0]), matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    return rotated[:, :, None]


def oversample(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, max_rotation: float) -> tuple[np.ndarray, np.ndarray]:
    """Add augmented copies of each minority class until it matches the largest class."""
    counts = np.bincount(y)
    extra_x, extra_y = [x], [y]
    for c, count in enumerate(counts):
        if 0 < count < counts.max():
            picks = rng.choice(np.flatnonzero(y == c), size=counts.max() - count)
            extra_x.append(np.stack([augment(x[i], rng, max_rotation) for i in picks]))
            extra_y.append(np.full(len(picks), c, dtype=y.dtype))
    return np.concatenate(extra_x), np.concatenate(extra_y)


def _counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    return {c: int(n) for c, n in zip(classes, np.bincount(y, minlength=len(classes)))}


def run_step(params: Params, ws: Workspace) -> BalanceResult:
    """Balance the training split into outputs/balance/{train.npz,balance.json}."""
    data = load_dataset(ws.out / "preprocess" / "dataset.npz")
    x, y, classes = data["x_train"], data["y_train"], [str(c) for c in data["classes"]]
    strategy, rng = params.balance.strategy, np.random.default_rng(params.balance.seed)
    if strategy == "oversample":
        x, y = oversample(x, y, rng, params.balance.max_rotation)
    weights = class_weights(y, len(classes)) if strategy == "class_weight" else None
    out = ws.step_dir("balance")
    np.savez(out / "train.npz", x=x, y=y)
    result = BalanceResult(out / "train.npz", _counts(data["y_train"], classes), _counts(y, classes), weights)
    summary = {k: v for k, v in asdict(result).items() if k != "train"}
    (out / "balance.json").write_text(json.dumps({"strategy": strategy, **summary}, indent=2) + "\n")
    return result


def load_balance(ws: Workspace) -> BalanceResult:
    """Read back what run_step wrote (for the train step run on its own, e.g. by DVC)."""
    raw = json.loads((ws.out / "balance" / "balance.json").read_text())
    weights = {int(k): v for k, v in raw["class_weight"].items()} if raw["class_weight"] else None
    return BalanceResult(ws.out / "balance" / "train.npz", raw["counts_before"], raw["counts_after"], weights)
