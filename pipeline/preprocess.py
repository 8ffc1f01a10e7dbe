"""Preprocessing: OpenCV decode, resize, scale to [0, 1]; patient-grouped, stratified split."""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.config import Params, SplitRatios, Workspace
from pipeline.data import read_manifest
from pipeline.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PreprocessResult:
    """Where the arrays went and how many images each split holds."""

    dataset: Path
    split_sizes: dict[str, int]
    classes: list[str]


def load_image(path: Path, size: int) -> np.ndarray:
    """Decode one image as grayscale, resize to size x size, scale to float32 in [0, 1]."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DataError(path, "cannot be decoded as an image")
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp).astype(np.float32) / 255.0


def split_patients(manifest: pd.DataFrame, ratios: SplitRatios, seed: int) -> pd.Series:
    """Assign each image a split so that no patient spans two splits, stratified by label.

    Patients are grouped by their most frequent label; within each label the shuffled patients
    are cut by the ratios (at least one patient per split whenever a label has three or more).
    """
    rng = np.random.default_rng(seed)
    patient_label = manifest.groupby("patient_id")["label"].agg(lambda s: s.mode().iloc[0])
    assignment: dict[str, str] = {}
    for label in sorted(patient_label.unique()):
        patients = sorted(patient_label.index[patient_label == label])
        patients = [patients[i] for i in rng.permutation(len(patients))]
        n = len(patients)
        n_val = max(int(round(n * ratios.val)), 1 if n >= 3 else 0)
        n_test = max(int(round(n * ratios.test)), 1 if n >= 3 else 0)
        for i, pid in enumerate(patients):
            assignment[pid] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return manifest["patient_id"].map(assignment).rename("split")


def load_split(manifest: pd.DataFrame, root: Path, size: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load the images of one split as (N, size, size, 1) float32 and integer labels."""
    x = np.zeros((len(manifest), size, size, 1), dtype=np.float32)
    for i, rel in enumerate(manifest["path"]):
        x[i, :, :, 0] = load_image(root / rel, size)
    y = manifest["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    return x, y


def run_step(params: Params, ws: Workspace) -> PreprocessResult:
    """Split and preprocess the data set into outputs/preprocess/{dataset.npz,splits.csv}."""
    out = ws.step_dir("preprocess")
    manifest = read_manifest(ws.data_root)
    manifest["split"] = split_patients(manifest, params.preprocess.split, params.preprocess.seed)
    manifest.to_csv(out / "splits.csv", index=False, lineterminator="\n")
    classes = list(params.validate_.labels)
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split in SPLITS:
        x, y = load_split(manifest[manifest["split"] == split], ws.data_root, params.preprocess.size, classes)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(out / "dataset.npz", **arrays)
    sizes = {s: int((manifest["split"] == s).sum()) for s in SPLITS}
    return PreprocessResult(out / "dataset.npz", sizes, classes)


def load_dataset(path: Path) -> dict[str, np.ndarray]:
    """Read a dataset.npz written by run_step (no pickles)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
