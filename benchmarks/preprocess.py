"""Preprocess throughput: medpipe's preprocessing vs the seed's naive per-image loop, same 5,000 PNGs.

The naive side is the seed's code, one image at a time: `cv2.imread` grayscale -> `cv2.resize` -> `/255`.
medpipe's side does more per image: decode, aspect-preserving resize (area interpolation), CLAHE, uint8
shards written to disk, and the unit normalisation applied to every shard. Both run in this process on
the same files, alternating, best of `--repeats`. `decode_only` is the PNG decode alone on all cores: no
preprocessing that decodes every image can beat it, so `decode_only_ratio` is the ceiling of the ratio.

The second line is reduced JPEG decoding: `--jpeg-images` 1024 px JPEGs (quality 90; the chest X-rays of
../shared/datasets upscaled, else generated chest images) to 224 px. The seed's naive loop, medpipe with
`preprocess.jpeg_reduced` off (full decode) and on (libjpeg decodes at 1/4, then the area resize), and the
mean absolute error between medpipe's two outputs (uint8 grey levels).

Prints one JSON object per line (see docs/benchmarks.md).
Usage: python benchmarks/preprocess.py [--images 5000] [--source 256] [--size 64] [--jpeg-images 1000]
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


SHARED_XRAYS = Path(__file__).resolve().parents[1].parent / "shared/datasets/chest_xray_kermany224"


def large_jpegs(folder: Path, n: int, side: int = 1024) -> list[Path]:
    """`n` side x side JPEGs: the shared chest X-rays upscaled (cubic), else generated chest images."""
    sources = sorted(SHARED_XRAYS.rglob("*.jpeg"))[:n] if SHARED_XRAYS.is_dir() else []
    if len(sources) < n:
        manifest = synthesize(folder / "src", n_patients=n // 3 + 50, size=256, seed=5)
        sources = [folder / "src" / p for p in manifest["path"][:n]]
    paths = []
    for i, source in enumerate(sources):
        img = cv2.resize(cv2.imread(str(source), cv2.IMREAD_GRAYSCALE), (side, side), interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"{i}.jpg")
        cv2.imwrite(str(paths[-1]), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def jpeg_bench(tmp: Path, n: int, repeats: int) -> dict:
    """Reduced JPEG decoding against the full decode and the seed's loop, 1024 px JPEGs to 224 px."""
    folder = tmp / "jpeg"
    folder.mkdir()
    paths = large_jpegs(folder, n)
    naive(paths, 224)  # warm the page cache
    t_naive = best_of(repeats, lambda: naive(paths, 224))
    times, outputs = {}, {}
    for reduced in (False, True):
        for workers in (1, 0):
            pp = PreprocessParams(size=224, workers=workers, jpeg_reduced=reduced)
            out = folder / f"out{int(reduced)}{workers}"
            out.mkdir()
            times[reduced, workers] = best_of(repeats, lambda: medpipe(paths, out, pp))
        outputs[reduced] = np.rint(medpipe(paths, out, pp) * 255.0)  # the uint8 pixels again
    error = np.abs(outputs[True] - outputs[False])
    return {
        "bench": "preprocess_jpeg",
        "images": len(paths),
        "source": "chest_xray_kermany224 upscaled" if SHARED_XRAYS.is_dir() else "synthetic upscaled",
        "source_px": 1024,
        "size_px": 224,
        "naive_img_per_s": round(n / t_naive, 1),
        "full_decode_img_per_s": round(n / times[False, 0], 1),
        "full_decode_1_thread_img_per_s": round(n / times[False, 1], 1),
        "reduced_img_per_s": round(n / times[True, 0], 1),
        "reduced_1_thread_img_per_s": round(n / times[True, 1], 1),
        "reduced_vs_naive_ratio": round(t_naive / times[True, 0], 2),
        "reduced_vs_full_ratio": round(times[False, 0] / times[True, 0], 2),
        "reduced_vs_full_1_thread_ratio": round(times[False, 1] / times[True, 1], 2),
        "mean_abs_error": round(float(error.mean()), 3),
        "p99_abs_error": int(np.percentile(error, 99)),
    }


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
    parser.add_argument("--jpeg-images", type=int, default=1000, help="1024 px JPEGs for the second line; 0: skip")
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
        jpeg = jpeg_bench(Path(tmp), args.jpeg_images, args.repeats) if args.jpeg_images else None
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
    if jpeg is not None:
        print(json.dumps(jpeg), flush=True)


if __name__ == "__main__":
    main()
