"""Preprocessing: OpenCV decode, resize, scale to [0, 1]; patient-grouped, stratified split."""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.config import Params, SplitRatios, Workspace
from pipeline.imageio import read_image, to_gray

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PreprocessResult:
    """Where the arrays went and how many images each split holds."""

    dataset: Path
    split_sizes: dict[str, int]
    classes: list[str]


def load_image(path: Path, size: int) -> np.ndarray:
    """Decode one image (PNG/JPEG/DICOM, any depth) as grayscale float32 in [0, 1], resized to size x size."""
    img = to_gray(read_image(path).pixels)
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def leakage_groups(patients: pd.Series, hashes: pd.Series) -> pd.Series:
    """Group images that must share a split: same patient, or the same bytes (sha256) across patients."""
    parent = {p: p for p in patients}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for members in patients.groupby(hashes.to_numpy()).agg(list):
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    return patients.map(find).rename("group")


def split_patients(manifest: pd.DataFrame, ratios: SplitRatios, seed: int) -> pd.Series:
    """Assign each image a split so that no patient (column `patient_id`, or `group` when given) spans
    two splits, stratified by label.

    Groups take their most frequent label; within each label the shuffled groups are cut by the
    ratios (at least one group per split whenever a label has three or more).
    """
    rng = np.random.default_rng(seed)
    key = manifest["group"] if "group" in manifest else manifest["patient_id"]
    patient_label = manifest.groupby(key.to_numpy())["label"].agg(lambda s: s.mode().iloc[0])
    assignment: dict[str, str] = {}
    for label in sorted(patient_label.unique()):
        patients = sorted(patient_label.index[patient_label == label])
        patients = [patients[i] for i in rng.permutation(len(patients))]
        n = len(patients)
        n_val = max(int(round(n * ratios.val)), 1 if n >= 3 else 0)
        n_test = max(int(round(n * ratios.test)), 1 if n >= 3 else 0)
        for i, pid in enumerate(patients):
            assignment[pid] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return key.map(assignment).rename("split")


def load_split(manifest: pd.DataFrame, root: Path, size: int, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load the images of one split as (N, size, size, 1) float32 and integer labels."""
    x = np.zeros((len(manifest), size, size, 1), dtype=np.float32)
    for i, rel in enumerate(manifest["path"]):
        x[i, :, :, 0] = load_image(root / rel, size)
    y = manifest["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    return x, y


def run_step(params: Params, ws: Workspace) -> PreprocessResult:
    """Preprocess the validated images, split as validation decided, into outputs/preprocess/dataset.npz."""
    out = ws.step_dir("preprocess")
    manifest = pd.read_csv(ws.out / "validate" / "splits.csv", dtype=str, keep_default_na=False)
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
