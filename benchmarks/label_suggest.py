"""`medpipe label suggest`'s ranking: batched forward passes with Grad-CAM thumbnails for the head of the queue
only, against a Grad-CAM pass for every image (what every image with a thumbnail costs, and what suggest did
before 2026-12-04), side by side in one run on the same images and model.

Prints one JSON object per line (see docs/benchmarks.md). Needs /work/shared/datasets (or --shared).
Usage: python benchmarks/label_suggest.py [--images 1000] [--size 64] [--top 0,200,all] [--repeats 2]
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.config import ModelParams, NearDuplicateParams, PreprocessParams
from pipeline.label import image_files, suggest
from pipeline.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("/work/shared/datasets"))
    ap.add_argument("--dataset", default="chest_xray_kermany224")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--top", default="0,200,all", help="thumbnails per run: a count, or all")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    root = args.shared / args.dataset
    files = image_files(root)[: args.images]
    model = build_model(ModelParams(name="seed_cnn"), (args.size, args.size, 1), 2)  # the cost needs no training
    pre, near = PreprocessParams(size=args.size), NearDuplicateParams()
    suggest(model, ["a", "b"], files[:64], root, None, pre, near, 0)  # warm-up: graph tracing, imports
    results = {}
    for repeat in range(args.repeats):
        for top in args.top.split(","):
            out = Path(tempfile.mkdtemp(prefix="suggest-"))
            start = time.perf_counter()
            table = suggest(model, ["a", "b"], files, root, out, pre, near, None if top == "all" else int(top))
            seconds = time.perf_counter() - start
            shutil.rmtree(out)
            results.setdefault(top, []).append(seconds)
            record = {"bench": "label_suggest", "repeat": repeat, "top": top, "images": len(files), "size": args.size}
            record.update(thumbnails=int((table["gradcam"] != "").sum()), seconds=round(seconds, 2))
            record["images_per_s"] = round(len(files) / seconds, 1)
            print(json.dumps(record), flush=True)
    best = {top: min(s) for top, s in results.items()}
    if "all" in best:
        ratios = {f"all_over_{top}": round(best["all"] / s, 2) for top, s in best.items() if top != "all"}
        print(json.dumps({"bench": "label_suggest", "summary": "speed-up (best of repeats)", **ratios}), flush=True)


if __name__ == "__main__":
    main()
