"""Preprocessing: decode, fit to size, fix image quality (denoise, CLAHE), write uint8 shards under a cache key.

Pixels are stored as uint8 `.npy` shards (a quarter of float32, memory-mappable, so a split of any size
streams). The split was decided by validation. Normalisation (`unit`, per-image `zscore`, or the train
split's `dataset` mean/std) is the model's first layer (pipeline.model), so training, evaluation and
serving apply the very same one; this step only measures the train statistics it needs.
"""

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline import faults
from pipeline.config import PIXEL_FIELDS, Params, PreprocessParams, Workspace
from pipeline.errors import MedpipeError
from pipeline.imageio import imdecode, read_dicom, read_image
from pipeline.limits import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_PIXELS, JPEG_MAGIC, MB, Dimensions, check_image
from pipeline.outputs import replace_dir
from pipeline.scan import Mapper
from pipeline.semi import POOL
from pipeline.shards import read_meta
from pipeline.split import SPLITS
from pipeline.validate import ValidationReport

CODE_VERSION = "2"  # part of the cache key: bump whenever the pixel transform changes
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


# libjpeg's DCT scaling: the factor, and OpenCV's flags for it in gray and in colour
_REDUCED = (
    (8, cv2.IMREAD_REDUCED_GRAYSCALE_8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_COLOR_2),
)


def jpeg_reduction(dims: Dimensions | None, size: int, fit: str) -> int:
    """How much smaller a JPEG may decode and still only shrink when fitted to `size` (fit_to_size).

    The side that fit_to_size scales to `size` (the longer one for `pad`, the shorter for `crop` and
    `stretch`) must stay at least `size` after the reduction, so no pixel is made up by an upscale.

    Args:
        dims: What the JPEG's header declares (None: unknown).
        size: The side of the fitted image.
        fit: "pad", "crop" or "stretch".

    Returns:
        8, 4 or 2 (decode at 1/8, 1/4 or 1/2 of the size), or 1 (decode at full size).
    """
    if dims is None:
        return 1
    side = max(dims.width, dims.height) if fit == "pad" else min(dims.width, dims.height)
    return next((factor for factor, _, _ in _REDUCED if side // factor >= size), 1)


def decode_uint8(
    path: Path,
    color: str,
    data: bytes | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_FILE_MB * MB,
    fitted: tuple[int, str] | None = None,
) -> np.ndarray:
    """Decode PNG/JPEG (8 or 16 bit) or DICOM into uint8, (H, W) gray or (H, W, 3) RGB.

    `data`: the file's bytes when already in hand (e.g. a served request; `path` then only names it).
    A file over `max_bytes`, or whose header declares more than `max_pixels`, is refused before it
    decodes (pipeline.limits). OpenCV decodes rasters straight to the wanted colour; DICOM (and any
    file OpenCV refuses, to get the precise one-line error) goes through pipeline.imageio.

    Args:
        path: The image file (or, with `data`, its name).
        color: "gray" or "rgb".
        data: The file's bytes, if already read.
        max_pixels: The most pixels a header may declare.
        max_bytes: The largest file accepted.
        fitted: (size, fit) the pixels will be fitted to: a JPEG that large enough decodes reduced
            (jpeg_reduction). None: always at full size.

    Returns:
        uint8 pixels, (H, W) for gray or (H, W, 3) RGB.
    """
    dims = None
    if data is not None or path.is_file():
        dims = check_image(path, path if data is None else data, max_pixels, max_bytes)
    dicom = path.suffix.lower() == ".dcm" or (data is not None and data[128:132] == b"DICM")
    if not dicom and (data is not None or path.is_file()):
        buf = np.frombuffer(data, np.uint8) if data is not None else np.fromfile(path, np.uint8)
        flags = cv2.IMREAD_ANYDEPTH | (cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR)
        factor = jpeg_reduction(dims, *fitted) if fitted and buf[:3].tobytes() == JPEG_MAGIC else 1
        if factor > 1:  # 8-bit JPEG pixels either way
            flags = next(gray if color == "gray" else rgb for f, gray, rgb in _REDUCED if f == factor)
        raw = imdecode(path, buf, flags) if buf.size else None
        if raw is not None and raw.size and raw.dtype in (np.uint8, np.uint16):
            raw = raw if raw.dtype == np.uint8 else np.round(raw / 257.0).astype(np.uint8)
            return raw if color == "gray" else cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    # checked above: the readers need not check again
    pixels = (
        read_dicom(path, b"", data, None, None)
        if dicom and data is not None
        else read_image(path, data=data, max_pixels=None, max_bytes=None)
    ).pixels
    return pixels_to_uint8(pixels, color)


def pixels_to_uint8(pixels: np.ndarray, color: str) -> np.ndarray:
    """Pixels in [0, 1] (float) or uint8/uint16, (H, W) or (H, W, 1|3|4), to uint8 in the wanted colour.

    Args:
        pixels: The decoded pixels.
        color: "gray" or "rgb".

    Returns:
        uint8 pixels, (H, W) for gray or (H, W, 3) for rgb (other shapes as they come).
    """
    if pixels.dtype == np.uint16:
        pixels = pixels / 65535.0
    if pixels.dtype != np.uint8:
        pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] in (1, 4):
        pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    if color == "gray" and pixels.ndim == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    if color == "rgb" and pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def fit_to_size(img: np.ndarray, size: int, fit: str) -> np.ndarray:
    """Resize to size x size: `pad` keeps the aspect ratio and pads with black, `crop` keeps it and
    cuts the centre, `stretch` squashes. Area interpolation when shrinking, bilinear when growing.

    Args:
        img: The pixels, (H, W) or (H, W, C).
        size: The side of the square output.
        fit: "pad", "crop" or "stretch".

    Returns:
        The (size, size[, C]) image.
    """
    h, w = img.shape[:2]
    scale = {"pad": size / max(h, w), "crop": size / min(h, w), "stretch": 1.0}[fit]
    nh, nw = (size, size) if fit == "stretch" else (max(1, round(h * scale)), max(1, round(w * scale)))
    interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    if fit == "pad":
        top, left = (size - nh) // 2, (size - nw) // 2
        return cv2.copyMakeBorder(img, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=0)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[top : top + size, left : left + size]


def enhance(img: np.ndarray, preprocessing: PreprocessParams) -> np.ndarray:
    """Denoise (median, bilateral or non-local means), then CLAHE (on the L channel of colour images).

    Args:
        img: uint8 pixels, (H, W) gray or (H, W, 3) RGB.
        preprocessing: The preprocess params (denoise, clahe).

    Returns:
        The enhanced uint8 image, same shape.
    """
    rgb = img.ndim == 3
    if preprocessing.denoise == "median":
        img = cv2.medianBlur(img, 3)
    elif preprocessing.denoise == "bilateral":
        img = cv2.bilateralFilter(img, 5, 40, 5)
    elif preprocessing.denoise == "nlmeans":
        img = (
            cv2.fastNlMeansDenoisingColored(img, None, h=10, hColor=10)
            if rgb
            else cv2.fastNlMeansDenoising(img, None, h=10)
        )
    if preprocessing.clahe.enabled:
        grid = preprocessing.clahe.tile_grid
        clahe = cv2.createCLAHE(preprocessing.clahe.clip_limit, (grid, grid))
        if not rgb:
            return clahe.apply(img)
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return img


def prepare_image(path: Path, preprocessing: PreprocessParams, data: bytes | None = None) -> np.ndarray:
    """One image file (or its bytes) as the model's input pixels: uint8 (size, size, channels).

    Args:
        path: The image file (or, with `data`, its name).
        preprocessing: The preprocess params.
        data: The file's bytes, if already read.

    Returns:
        uint8 (size, size, channels).
    """
    fitted = (preprocessing.size, preprocessing.fit) if preprocessing.jpeg_reduced else None
    img = decode_uint8(
        path, preprocessing.color, data, preprocessing.max_pixels, preprocessing.max_file_mb * MB, fitted
    )
    return prepare_pixels(img, preprocessing)


def prepare_pixels(img: np.ndarray, preprocessing: PreprocessParams) -> np.ndarray:
    """Decoded uint8 pixels in the wanted colour to the model's input pixels: fit, denoise, CLAHE.

    Args:
        img: uint8 pixels, (H, W) gray or (H, W, 3) RGB.
        preprocessing: The preprocess params.

    Returns:
        uint8 (size, size, channels).
    """
    img = enhance(fit_to_size(img, preprocessing.size, preprocessing.fit), preprocessing)
    return img[:, :, None] if img.ndim == 2 else img


def load_image(path: Path, preprocessing: PreprocessParams) -> np.ndarray:
    """One image as a model input: float32 (size, size, channels) in [0, 1].

    Args:
        path: The image file.
        preprocessing: The preprocess params.

    Returns:
        float32 (size, size, channels) in [0, 1].
    """
    return prepare_image(path, preprocessing).astype(np.float32) / 255.0


def cache_key(params: Params, validated: ValidationReport) -> str:
    """Hash of what the shards depend on: the split table (paths, labels, splits, content sha256),
    the pixel-affecting params, the class list and the code version; with `semi` or `pretrain` on, the pool table too.

    Args:
        params: The run's params.
        validated: The validate step's report (its split table is hashed).

    Returns:
        The md5 hex digest.
    """
    preprocessing = params.preprocess.model_dump(mode="json")
    spec = {
        "code": CODE_VERSION,
        "labels": params.validate_.classes,
        "shard_size": preprocessing["shard_size"],
        "pixels": {k: preprocessing[k] for k in PIXEL_FIELDS},
        "splits": hashlib.md5(validated.splits_csv.read_bytes()).hexdigest(),
    }
    if pool_paths(params, validated):
        spec["pool"] = hashlib.md5(validated.pool_csv.read_bytes()).hexdigest()
    return hashlib.md5(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def pool_paths(params: Params, validated: ValidationReport) -> list[str]:
    """The unlabelled images `semi` training or `pretrain` may learn from (validation's pool.csv, excluded
    ones left out), or none while both are off.

    Args:
        params: The run's params (semi.method, pretrain.epochs).
        validated: The validate step's report (its pool table).

    Returns:
        Paths relative to the data root, in pool.csv's order.
    """
    import pandas as pd

    if (params.semi.method == "none" and not params.pretrain.epochs) or not validated.pool_csv.is_file():
        return []
    pool = pd.read_csv(validated.pool_csv, dtype=str, keep_default_na=False)
    return pool.loc[pool["excluded"] == "", "path"].tolist()


def is_current(folder: Path, key: str) -> bool:
    """Whether `folder` already holds complete shards for this cache key.

    Args:
        folder: The preprocess output folder.
        key: The wanted cache key.

    Returns:
        True when meta.json names `key` and every shard and label file it lists exists.
    """
    try:
        meta = read_meta(folder)
    except (OSError, ValueError):
        return False
    files = [f for split in meta["splits"].values() for f in [*split["shards"], split["labels"]]]
    return meta.get("key") == key and all((folder / f).is_file() for f in files)


@contextmanager
def _decoder_pool(workers: int):
    """Threads for decoding (OpenCV releases the GIL); OpenCV's own threads off meanwhile."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            yield pool
    finally:
        cv2.setNumThreads(before)


def prepare_many(paths: list[Path], preprocessing: PreprocessParams, pool: ThreadPoolExecutor) -> np.ndarray:
    """Prepare images into one uint8 array, each thread filling a contiguous run of rows.

    Args:
        paths: The image files.
        preprocessing: The preprocess params.
        pool: The decoding threads.

    Returns:
        uint8 (len(paths), size, size, channels).
    """
    x = np.empty((len(paths), preprocessing.size, preprocessing.size, preprocessing.channels), dtype=np.uint8)

    def fill(rows: range) -> None:
        for i in rows:
            x[i] = prepare_image(paths[i], preprocessing)

    runs = max(1, min(len(paths), 64))  # a few per thread: balanced, with little hand-over cost
    list(pool.map(fill, (range(len(paths))[k::runs] for k in range(runs))))
    return x


def write_shard(job: tuple[list[Path], Path, PreprocessParams]) -> tuple[float, float]:
    """Prepare one shard's images, (paths, .npy file, params), and save them; return their pixel sum and
    sum of squares on the [0, 1] scale. One unit of parallel work; memory is one shard.

    Args:
        job: (image files, .npy file to write, preprocess params).

    Returns:
        (pixel sum, sum of squares) on the [0, 1] scale.
    """
    paths, file, preprocessing = job
    with _decoder_pool(preprocessing.workers) as pool:
        x = prepare_many(paths, preprocessing, pool)
    np.save(file, x)
    counts = np.bincount(x.ravel(), minlength=256)  # exact sums without a float copy of the shard
    return float(counts @ _LEVELS), float(counts @ np.square(_LEVELS))


def write_split(
    paths: list[Path],
    labels: np.ndarray,
    name: str,
    folder: Path,
    preprocessing: PreprocessParams,
    mapper: Mapper = map,
) -> dict:
    """Prepare one split shard by shard, the shards through `mapper` (by default one after the other, each
    on all cores); return its meta entry with the pixel sum and sum of squares (data-set statistics).

    Args:
        paths: The split's image files.
        labels: Their class indices.
        name: The split (train, val or test).
        folder: Where the shards and labels are written.
        preprocessing: The preprocess params.
        mapper: Maps write_shard over the shards.

    Returns:
        The split's meta entry: n, shards, labels, sum and sumsq.
    """
    starts = range(0, len(paths), preprocessing.shard_size)
    shards = [f"x_{name}_{i:05d}.npy" for i in range(len(starts))]
    jobs = [
        (paths[start : start + preprocessing.shard_size], folder / shard, preprocessing)
        for start, shard in zip(starts, shards)
    ]
    sums = list(mapper(write_shard, jobs))
    np.save(folder / f"y_{name}.npy", labels.astype(np.int64))
    faults.point("preprocess.split")
    return {
        "n": len(paths),
        "shards": shards,
        "labels": f"y_{name}.npy",
        "sum": sum(s for s, _ in sums),
        "sumsq": sum(q for _, q in sums),
    }


def run_step(params: Params, ws: Workspace, validated: ValidationReport, mapper: Mapper = map) -> PreprocessResult:
    """Preprocess the validated images, split as validation decided, into uint8 shards in outputs/preprocess
    (nothing recomputed when the cache key matches what is there). Shards go through `mapper` when one is
    given (a Dask cluster: flows/data.py).

    Args:
        params: The run's params.
        ws: The workspace (the data root; writes outputs/preprocess).
        validated: The validate step's report (its split table).
        mapper: Maps write_shard over the shards.

    Returns:
        Where the shards are, the split sizes, classes, cache key, whether cached, and the train mean/std.
    """
    folder, preprocessing, key = ws.out / "preprocess", params.preprocess, cache_key(params, validated)
    if is_current(folder, key):
        return _result(folder, cached=True)
    manifest = validated.split_table()
    classes = params.validate_.classes
    with replace_dir(folder) as tmp:  # a crash leaves the old shards (or none), never a half-written set
        splits = {
            s: write_split(
                [ws.data_root / p for p in part["path"]],
                part["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(),
                s,
                tmp,
                preprocessing,
                mapper,
            )
            for s in SPLITS
            for part in [manifest[manifest["split"] == s]]
        }
        pool = pool_paths(params, validated)
        if pool:  # `semi` training's unlabelled images (label -1)
            splits[POOL] = write_split(
                [ws.data_root / p for p in pool], np.full(len(pool), -1), POOL, tmp, preprocessing, mapper
            )
        pixels = max(splits["train"]["n"] * preprocessing.size * preprocessing.size * preprocessing.channels, 1)
        mean = splits["train"]["sum"] / pixels
        std = float(np.sqrt(max(splits["train"]["sumsq"] / pixels - mean**2, 0.0)))
        meta = {
            "key": key,
            "classes": classes,
            "size": preprocessing.size,
            "channels": preprocessing.channels,
            "mean": mean,
            "std": std,
            "splits": splits,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return _result(folder, cached=False)


def load_result(ws: Workspace) -> PreprocessResult:
    """Read back what the preprocess step wrote (for a step run on its own, e.g. by DVC).

    Args:
        ws: The workspace (reads outputs/preprocess/meta.json).

    Returns:
        The result, as run_step returned it for cached shards.

    Raises:
        MedpipeError: The data have not been preprocessed in this workspace.
    """
    folder = ws.out / "preprocess"
    try:
        return _result(folder, cached=True)
    except (OSError, KeyError, ValueError):
        raise MedpipeError(folder, "no preprocessed shards: run `medpipe stage preprocess` first") from None


def _result(folder: Path, cached: bool) -> PreprocessResult:
    meta = read_meta(folder)
    sizes = {s: int(v["n"]) for s, v in meta["splits"].items()}
    return PreprocessResult(folder, sizes, meta["classes"], meta["key"], cached, meta["mean"], meta["std"])
