"""Preprocessing: decode, fit to size, fix image quality (denoise, CLAHE), write uint8 shards under a cache key.

Pixels are stored as uint8 `.npy` shards (a quarter of float32, memory-mappable, so a split of any size
streams). The split was decided by validation. Normalisation (`unit`, per-image `zscore`, or the train
split's `dataset` mean/std) is the model's first layer (pipeline.model), so training, evaluation and
serving apply the very same one; this step only measures the train statistics it needs.
"""

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.config import Params, PreprocessParams, SplitRatios, Workspace
from pipeline.imageio import read_image

SPLITS = ("train", "val", "test")
CODE_VERSION = "2"  # part of the cache key: bump whenever the pixel transform changes
_KEY_FIELDS = ("size", "color", "fit", "clahe", "denoise")
_LEVELS = np.arange(256) / 255.0


@dataclass(frozen=True)
class PreprocessResult:
    """Where the shards went, how many images each split holds, and whether they came from the cache."""

    folder: Path
    split_sizes: dict[str, int]
    classes: list[str]
    key: str
    cached: bool
    mean: float
    std: float


def decode_uint8(path: Path, color: str) -> np.ndarray:
    """Decode PNG/JPEG (8 or 16 bit) or DICOM into uint8, (H, W) gray or (H, W, 3) RGB.

    OpenCV decodes rasters straight to the wanted colour; DICOM (and any file OpenCV refuses, to get
    the precise one-line error) goes through pipeline.imageio.
    """
    if path.suffix.lower() != ".dcm" and path.is_file():
        data = np.fromfile(path, np.uint8)
        flags = cv2.IMREAD_ANYDEPTH | (cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR)
        raw = cv2.imdecode(data, flags) if data.size else None
        if raw is not None and raw.size and raw.dtype in (np.uint8, np.uint16):
            raw = raw if raw.dtype == np.uint8 else np.round(raw / 257.0).astype(np.uint8)
            return raw if color == "gray" else cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    pixels = read_image(path).pixels
    if color == "gray" and pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    elif color == "rgb" and pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.round(pixels * 255.0).astype(np.uint8)


def fit_to_size(img: np.ndarray, size: int, fit: str) -> np.ndarray:
    """Resize to size x size: `pad` keeps the aspect ratio and pads with black, `crop` keeps it and
    cuts the centre, `stretch` squashes. Area interpolation when shrinking, bilinear when growing."""
    h, w = img.shape[:2]
    scale = {"pad": size / max(h, w), "crop": size / min(h, w), "stretch": 1.0}[fit]
    nh, nw = (size, size) if fit == "stretch" else (max(1, round(h * scale)), max(1, round(w * scale)))
    interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    if fit == "pad":
        top, left = (size - nh) // 2, (size - nw) // 2
        return cv2.copyMakeBorder(img, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=0)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[top:top + size, left:left + size]


def enhance(img: np.ndarray, pp: PreprocessParams) -> np.ndarray:
    """Denoise (median, bilateral or non-local means), then CLAHE (on the L channel of colour images)."""
    rgb = img.ndim == 3
    if pp.denoise == "median":
        img = cv2.medianBlur(img, 3)
    elif pp.denoise == "bilateral":
        img = cv2.bilateralFilter(img, 5, 40, 5)
    elif pp.denoise == "nlmeans":
        img = (cv2.fastNlMeansDenoisingColored(img, None, h=10, hColor=10) if rgb
               else cv2.fastNlMeansDenoising(img, None, h=10))
    if pp.clahe.enabled:
        clahe = cv2.createCLAHE(pp.clahe.clip_limit, (pp.clahe.tile_grid, pp.clahe.tile_grid))
        if not rgb:
            return clahe.apply(img)
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return img


def prepare_image(path: Path, pp: PreprocessParams) -> np.ndarray:
    """One image as the model's input pixels: uint8 (size, size, channels)."""
    img = enhance(fit_to_size(decode_uint8(path, pp.color), pp.size, pp.fit), pp)
    return img[:, :, None] if img.ndim == 2 else img


def load_image(path: Path, pp: PreprocessParams) -> np.ndarray:
    """One image as a model input: float32 (size, size, channels) in [0, 1]."""
    return prepare_image(path, pp).astype(np.float32) / 255.0


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


def cache_key(params: Params, ws: Workspace) -> str:
    """Hash of what the shards depend on: the split table (paths, labels, splits, content sha256),
    the pixel-affecting params, the class list and the code version."""
    pp = params.preprocess.model_dump(mode="json")
    spec = {"code": CODE_VERSION, "labels": params.validate_.labels, "shard_size": pp["shard_size"],
            "pixels": {k: pp[k] for k in _KEY_FIELDS},
            "splits": hashlib.md5((ws.out / "validate" / "splits.csv").read_bytes()).hexdigest()}
    return hashlib.md5(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def read_meta(folder: Path) -> dict:
    """The shard folder's meta.json: key, classes, geometry, train mean/std, shard files per split."""
    return json.loads((folder / "meta.json").read_text())


def is_current(folder: Path, key: str) -> bool:
    """Whether `folder` already holds complete shards for this cache key."""
    try:
        meta = read_meta(folder)
    except (OSError, ValueError):
        return False
    files = [f for split in meta["splits"].values() for f in [*split["shards"], split["labels"]]]
    return meta.get("key") == key and all((folder / f).is_file() for f in files)


@contextmanager
def _decoder_pool(workers: int):
    """Threads for decoding (OpenCV releases the GIL); OpenCV's own threads off meanwhile."""
    import os

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            yield pool
    finally:
        cv2.setNumThreads(before)


def write_split(paths: list[Path], labels: np.ndarray, name: str, folder: Path, pp: PreprocessParams,
                pool: ThreadPoolExecutor) -> dict:
    """Prepare one split shard by shard (memory stays bounded by one shard); return its meta entry
    with the pixel sum and sum of squares on the [0, 1] scale (for the data-set statistics)."""
    shards, total, squares = [], 0.0, 0.0
    for i, start in enumerate(range(0, len(paths), pp.shard_size)):
        x = np.stack(list(pool.map(lambda p: prepare_image(p, pp), paths[start:start + pp.shard_size])))
        np.save(folder / f"x_{name}_{i:05d}.npy", x)
        shards.append(f"x_{name}_{i:05d}.npy")
        counts = np.bincount(x.ravel(), minlength=256)  # exact sums without a float copy of the shard
        total += float(counts @ _LEVELS)
        squares += float(counts @ np.square(_LEVELS))
    np.save(folder / f"y_{name}.npy", labels.astype(np.int64))
    return {"n": len(paths), "shards": shards, "labels": f"y_{name}.npy", "sum": total, "sumsq": squares}


def run_step(params: Params, ws: Workspace) -> PreprocessResult:
    """Preprocess the validated images, split as validation decided, into uint8 shards in outputs/preprocess
    (nothing recomputed when the cache key matches what is there)."""
    folder, pp, key = ws.step_dir("preprocess"), params.preprocess, cache_key(params, ws)
    if not is_current(folder, key):
        manifest = pd.read_csv(ws.out / "validate" / "splits.csv", dtype=str, keep_default_na=False)
        classes = list(params.validate_.labels)
        for old in [*folder.glob("*.npy"), *folder.glob("*.npz"), folder / "meta.json"]:
            old.unlink(missing_ok=True)
        with _decoder_pool(pp.workers) as pool:
            splits = {s: write_split([ws.data_root / p for p in part["path"]],
                                     part["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(), s,
                                     folder, pp, pool)
                      for s in SPLITS for part in [manifest[manifest["split"] == s]]}
        pixels = max(splits["train"]["n"] * pp.size * pp.size * pp.channels, 1)
        mean = splits["train"]["sum"] / pixels
        std = float(np.sqrt(max(splits["train"]["sumsq"] / pixels - mean**2, 0.0)))
        meta = {"key": key, "classes": classes, "size": pp.size, "channels": pp.channels,
                "mean": mean, "std": std, "splits": splits}
        (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return _result(folder, cached=False)
    return _result(folder, cached=True)


def _result(folder: Path, cached: bool) -> PreprocessResult:
    meta = read_meta(folder)
    sizes = {s: int(v["n"]) for s, v in meta["splits"].items()}
    return PreprocessResult(folder, sizes, meta["classes"], meta["key"], cached, meta["mean"], meta["std"])


class Shards:
    """One split's uint8 shards, memory-mapped: random access to any images without loading them all."""

    def __init__(self, folder: Path, split: str) -> None:
        meta = read_meta(folder)
        entry = meta["splits"][split]
        self.parts = [np.load(folder / f, mmap_mode="r", allow_pickle=False) for f in entry["shards"]]
        self.shape = (meta["size"], meta["size"], meta["channels"])
        self.ends = np.cumsum([len(p) for p in self.parts], dtype=np.int64)
        self.labels = np.load(folder / entry["labels"], allow_pickle=False)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def nbytes(self) -> int:
        """Size of the whole split in memory."""
        return len(self) * int(np.prod(self.shape))

    def take(self, index: np.ndarray) -> np.ndarray:
        """The images at these positions, uint8 (len(index), size, size, channels)."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), *self.shape), dtype=np.uint8)
        part = np.searchsorted(self.ends, index, side="right")
        for p in np.unique(part):
            rows = part == p
            start = self.ends[p - 1] if p else 0
            out[rows] = self.parts[p][index[rows] - start]
        return out

    def read(self) -> np.ndarray:
        """The whole split in memory, uint8."""
        return np.concatenate(self.parts) if self.parts else np.zeros((0, *self.shape), dtype=np.uint8)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as model inputs: float32 (N, size, size, channels) in [0, 1], and integer labels."""
    shards = Shards(folder, split)
    return shards.read().astype(np.float32) / 255.0, shards.labels
