"""Preprocess throughput: medpipe's preprocessing vs the seed's naive per-image loop, same 5,000 PNGs.

The naive side is the seed's code, one image at a time: `cv2.imread` grayscale -> `cv2.resize` -> `/255`.
medpipe's side does more per image: decode, aspect-preserving resize (area interpolation), CLAHE, uint8
shards written to disk, and the unit normalisation applied to every shard. Both run in this process on
the same files, alternating, best of `--repeats`. `decode_only` is the PNG decode alone on all cores: no
preprocessing that decodes every image can beat it, so `decode_only_ratio` is the ceiling of the ratio.

Prints one JSON object per line (see docs/benchmarks.md).
Usage: python benchmarks/preprocess.py [--images 5000] [--source 256] [--size 64]
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import PreprocessParams
from pipeline.data import synthesize
from pipeline.preprocess import _decoder_pool, write_split


def naive(paths: list[Path], size: int) -> np.ndarray:
    """The seed's preprocessing, as written: one image at a time."""
    images = []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        img = cv2.resize(img, (size, size))
        images.append(img / 255)
    return np.array(images)


def medpipe(paths: list[Path], out: Path, pp: PreprocessParams) -> np.ndarray:
    """medpipe's preprocess of one split, then the unit normalisation of what it wrote."""
    entry = write_split(paths, np.zeros(len(paths), np.int64), "train", out, pp)
    return np.concatenate([np.load(out / f) for f in entry["shards"]]).astype(np.float32) / 255.0


def decode_only(paths: list[Path], workers: int) -> None:
    """Only the PNG decode (`cv2.imdecode`, nothing else) on `workers` threads: the ceiling of any
    preprocessing that has to decode every image (PNG inflate is most of the naive loop's time)."""
    blobs = [p.read_bytes() for p in paths]
    with _decoder_pool(workers) as pool:
        list(pool.map(lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE), blobs))


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--source", type=int, default=256, help="side of the generated chest PNGs")
    parser.add_argument("--size", type=int, default=64, help="side after preprocessing")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthesize(Path(tmp) / "data", n_patients=args.images // 3 + 50, size=args.source, seed=3)
        paths = [Path(tmp) / "data" / p for p in manifest["path"][: args.images]]
        naive(paths, args.size)  # warm the page cache for both sides
        t_naive = best_of(args.repeats, lambda: naive(paths, args.size))
        figures = {}
        for workers in (1, 0):
            pp = PreprocessParams(size=args.size, clahe={"enabled": True}, workers=workers)
            out = Path(tmp) / f"out{workers}"
            out.mkdir()
            figures[workers] = best_of(args.repeats, lambda: medpipe(paths, out, pp))
        t_decode = best_of(args.repeats, lambda: decode_only(paths, 0))
    n = len(paths)
    print(
        json.dumps(
            {
                "bench": "preprocess",
                "images": n,
                "source_px": args.source,
                "size_px": args.size,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "medpipe_img_per_s": round(n / figures[0]),
                "medpipe_1_thread_img_per_s": round(n / figures[1]),
                "naive_img_per_s": round(n / t_naive),
                "throughput_ratio": round(t_naive / figures[0], 2),
                "one_thread_ratio": round(t_naive / figures[1], 2),
                "decode_only_img_per_s": round(n / t_decode),
                "decode_only_ratio": round(t_naive / t_decode, 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
