"""Near-duplicate detection: recall on planted near-copies of real images, false positives on distinct
images, the fingerprint's share of the scan, and grouping 100,000 fingerprints.

Prints one JSON object per line (see docs/benchmarks.md). Needs /work/shared/datasets (or --datasets).
Usage: python benchmarks/near_duplicates.py [--every 10] [--n 100000]
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.imageio import read_image, to_gray
from pipeline.near_duplicates import find_groups, fingerprint, hamming, nearest_distances, to_words
from pipeline.scan import scan_file

THRESHOLDS = (14, 20, 24, 30, 36, 40, 46)


def _encode(image: np.ndarray, kind: str, quality: int = 95) -> tuple[str, bytes]:
    if kind == "jpg":
        return "x.jpg", cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
    return "x.png", cv2.imencode(".png", image)[1].tobytes()


def variants(image: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[str, bytes]]:
    """One near copy per family, random parameters in the issue's ranges (image: uint8, gray or BGR)."""
    h, w = image.shape[:2]
    s = rng.uniform(0.5, 1.5)
    resized = cv2.resize(
        image, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    )
    c = rng.uniform(0.01, 0.05)
    dx, dy = max(1, round(c * w)), max(1, round(c * h))
    crop = image[dy:, dx:] if rng.uniform() < 0.5 else image[: h - dy, : w - dx]
    move = np.float32([[1, 0, rng.choice([-1, 1]) * dx], [0, 1, rng.choice([-1, 1]) * dy]])
    shifted = cv2.warpAffine(image, move, (w, h), borderMode=cv2.BORDER_REPLICATE)
    bright = np.clip(image * 1.0 + rng.uniform(-0.1, 0.1) * 255, 0, 255).astype(np.uint8)
    contrast = np.clip((image - image.mean()) * rng.uniform(0.9, 1.1) + image.mean(), 0, 255).astype(np.uint8)
    other = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return {
        "jpeg": _encode(image, "jpg", int(rng.integers(60, 96))),
        "resize": _encode(resized, "png"),
        "resize_back": _encode(cv2.resize(resized, (w, h)), "png"),
        "crop": _encode(crop, "png"),
        "shift": _encode(shifted, "png"),
        "brightness": _encode(bright, "png"),
        "contrast": _encode(contrast, "png"),
        "png_jpeg": _encode(image, "jpg", 90),
        "gray_rgb": _encode(other, "png"),
    }


def _fp_bytes(name: str, data: bytes) -> str:
    return fingerprint(to_gray(read_image(Path(name), data=data).pixels) * 255.0)


def _images(datasets: Path, every: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Sampled originals per data set as uint8 arrays (as decoded), keyed by path."""
    out = {}
    for name in ("chest_xray_kermany224", "blood_cells_pbc"):
        root = datasets / name
        paths = pd.read_csv(root / "manifest.csv")["path"].tolist()[::every]
        out[name] = [(p, cv2.imread(str(root / p), cv2.IMREAD_UNCHANGED)) for p in paths]
    npz = np.load(datasets / "medmnist" / "pneumoniamnist_trainsubsampled.npz")
    out["pneumoniamnist"] = [(f"test/{i}", im) for i, im in enumerate(npz["test_images"][:: max(1, every // 2)])]
    return out


def recall(datasets: Path, every: int, seed: int = 0) -> list[dict]:
    """Distances between each sampled original and its planted copies; recall per family and threshold."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, images in _images(datasets, every).items():
        per: dict[str, list[int]] = {}
        for _, image in images:
            base = to_words([_fp_bytes(*_encode(image, "png"))])
            for family, (fname, data) in variants(image, rng).items():
                per.setdefault(family, []).append(int(hamming(base, to_words([_fp_bytes(fname, data)]))[0]))
        every_d = np.concatenate([np.array(v) for v in per.values()])
        rows.append(
            {
                "bench": "near_duplicates",
                "what": "recall",
                "dataset": name,
                "originals": len(images),
                "planted": int(every_d.size),
                **{f"recall_at_{t}": round(float((every_d <= t).mean()), 4) for t in THRESHOLDS},
                "max_distance": {f: int(max(v)) for f, v in per.items()},
                "recall_at_30_by_family": {f: round(float((np.array(v) <= 30).mean()), 3) for f, v in per.items()},
            }
        )
    return rows


def false_positives(datasets: Path) -> list[dict]:
    """Share of distinct images with another distinct image within each threshold (byte-identical copies
    listed in duplicates.csv, or identical arrays, are true duplicates and not counted)."""
    rows = []
    for name in ("chest_xray_kermany224", "blood_cells_pbc", "pneumoniamnist"):
        if name == "pneumoniamnist":
            npz = np.load(datasets / "medmnist" / "pneumoniamnist_trainsubsampled.npz")
            arrays = np.concatenate([npz[f"{s}_images"] for s in ("train", "val", "test")])
            keys = [a.tobytes() for a in arrays]
            fps = [fingerprint(a.astype(np.float32)) for a in arrays]
        else:
            root = datasets / name
            paths = pd.read_csv(root / "manifest.csv")["path"].tolist()
            fps = [fingerprint(to_gray(read_image(root / p).pixels) * 255.0) for p in paths]
            dup = pd.read_csv(root / "duplicates.csv")
            sha = dict(zip(dup["path"], dup["sha256"]))
            keys = [sha.get(p, p) for p in paths]
        first = pd.Series(keys).duplicated(keep="first").to_numpy()  # keep one of each true duplicate group
        distinct = [f for f, d in zip(fps, first) if not d]
        nn = nearest_distances(to_words(distinct), 47)
        rows.append(
            {
                "bench": "near_duplicates",
                "what": "false_positives",
                "dataset": name,
                "images": len(fps),
                "distinct": len(distinct),
                "true_duplicates_left_out": int(first.sum()),
                **{f"flagged_at_{t}": round(float((nn <= t).mean()), 5) for t in THRESHOLDS},
                "nn_distance_min": int(nn.min()),
                "nn_distance_p01": float(np.percentile(nn, 1)),
            }
        )
    return rows


def scan_cost(datasets: Path, n: int) -> dict:
    """The same files scanned with and without the fingerprint, interleaved, best of 5 rounds."""
    root = datasets / "chest_xray_kermany224"
    rels = pd.read_csv(root / "manifest.csv")["path"].tolist()[:n]
    cv2.setNumThreads(1)
    for rel in rels[:50]:
        scan_file(root, rel, b"")  # warm the page cache and imports
    best = {True: float("inf"), False: float("inf")}
    for _ in range(5):
        for flag in (False, True):
            t = time.perf_counter()
            for rel in rels:
                scan_file(root, rel, b"", with_fingerprint=flag)
            best[flag] = min(best[flag], time.perf_counter() - t)
    return {
        "bench": "near_duplicates",
        "what": "scan_cost",
        "files": len(rels),
        "scan_s": round(best[False], 3),
        "scan_with_fingerprint_s": round(best[True], 3),
        "fingerprint_overhead": round(best[True] / best[False] - 1, 4),
        "scan_ratio": round(best[False] / best[True], 4),
    }


def grouping(n: int, planted: int, threshold: int = 30, seed: int = 0) -> dict:
    """Group n random fingerprints with `planted` near copies (up to threshold - 6 bits flipped)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**63, size=(n, 4), dtype=np.int64).astype(np.uint64) | (
        rng.integers(0, 2, size=(n, 4)).astype(np.uint64) << np.uint64(63)
    )
    src, dst = rng.choice(n, planted, replace=False), None
    dst = rng.choice(np.setdiff1d(np.arange(n), src), planted, replace=False)
    copies = np.unpackbits(words[src].astype(">u8").view(np.uint8), axis=1)
    for row in copies:
        flip = rng.choice(256, int(rng.integers(1, threshold - 5)), replace=False)
        row[flip] ^= 1
    words[dst] = np.packbits(copies, axis=1).view(">u8").astype(np.uint64)
    hexes = [w.astype(">u8").tobytes().hex() for w in words]
    tracemalloc.start()
    t = time.perf_counter()
    groups = find_groups(hexes, threshold)
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    found = float(np.mean(groups.group[src] == groups.group[dst]) * (groups.group[src] >= 0).mean())
    return {
        "bench": "near_duplicates",
        "what": "grouping",
        "fingerprints": n,
        "planted": planted,
        "threshold": threshold,
        "seconds": round(seconds, 2),
        "peak_mb": round(peak / 2**20, 1),
        "planted_found": round(found, 4),
        "pairs": int(len(groups.pairs[0])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
    ap.add_argument("--every", type=int, default=10, help="recall: every k-th image of each set is an original")
    ap.add_argument("--scan-files", type=int, default=1000)
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    if not (args.datasets / "chest_xray_kermany224").is_dir():
        args.datasets = Path("/work/shared/datasets")
    for row in [
        *recall(args.datasets, args.every),
        *false_positives(args.datasets),
        scan_cost(args.datasets, args.scan_files),
        grouping(args.n, args.n // 20),
    ]:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
