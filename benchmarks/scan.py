"""Scan throughput: medpipe's parallel scan vs a naive one-image-at-a-time loop, same 10,000 PNGs.

Prints one JSON object per line (see docs/benchmarks.md). Usage: python benchmarks/scan.py [--images N]
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas  # noqa: F401  (imported by any real caller before it scans; not part of the timing)

from pipeline.scan import scan


def make_pngs(root: Path, n: int, size: int) -> list[str]:
    """n grayscale PNGs with structure (so PNG compression and the Laplacian do real work)."""
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (0, 0), 3)
    rels = []
    for i in range(n):
        img = np.roll(base, i % size, axis=i % 2) + rng.integers(0, 20, (size, size), dtype=np.uint8)
        rel = f"c{i % 4}/img{i:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img)
        rels.append(rel)
    return rels


def naive(root: Path, rels: list[str]) -> list[tuple]:
    """The baseline: one process, read, hash, decode, stats and Laplacian per image."""
    rows = []
    for rel in rels:
        data = (root / rel).read_bytes()
        img = cv2.imread(str(root / rel), cv2.IMREAD_UNCHANGED).astype(np.float32)
        rows.append(
            (rel, hashlib.sha256(data).hexdigest(), img.mean(), img.std(), cv2.Laplacian(img, cv2.CV_32F).var())
        )
    return rows


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sides to try")
    args = parser.parse_args()
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root, cache = Path(tmp) / "data", Path(tmp) / "scan.csv"
            rels = make_pngs(root, args.images, size)
            naive(root, rels[:200])  # warm the page cache and imports for both sides
            t_naive = timed(lambda: naive(root, rels))
            t_medpipe = timed(lambda: scan(root, rels, cache=cache))
            t_rescan = timed(lambda: scan(root, rels, cache=cache))
        n = args.images
        print(
            json.dumps(
                {
                    "bench": "scan",
                    "images": n,
                    "size": size,
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                    "medpipe_img_per_s": round(n / t_medpipe),
                    "naive_img_per_s": round(n / t_naive),
                    "throughput_ratio": round(t_naive / t_medpipe, 2),
                    "incremental_rescan_img_per_s": round(n / t_rescan),
                    "rescan_ratio": round(t_naive / t_rescan, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
