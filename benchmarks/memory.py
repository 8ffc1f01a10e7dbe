"""Memory: validate, preprocess, balance and one training epoch over 100,000 generated 128x128 PNGs.

Each step runs as `medpipe stage <step>` in its own process, as `dvc repro` runs them; its peak
resident memory (ru_maxrss from wait4, which covers the step's worker processes too) and wall time are
reported. The goal (docs/benchmarks.md) is on preprocess and the training epoch: peak RSS <= 3 GiB.

Prints one JSON object per line. Usage: python benchmarks/memory.py [--images 100000] [--size 128]
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
GOAL_GIB = 3.0


def make_data(root: Path, n: int, size: int) -> None:
    """n PNGs of two classes (a bright blob marks class `b`), one patient each, plus manifest.csv."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (0, 0), 4)
    rows = ["path,label,patient_id"]
    for i in range(n):
        label = "b" if i % 3 == 0 else "a"
        img = np.roll(base, (i * 7) % size, axis=i % 2).astype(np.int16) + rng.integers(-12, 12, (size, size))
        if label == "b":
            cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
            img += (60 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (size / 16) ** 2))).astype(np.int16)
        rel = f"images/{label}/{i:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), np.clip(img, 0, 255).astype(np.uint8))
        rows.append(f"{rel},{label},P{i:06d}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")


def write_params(project: Path, size: int) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["validate"].update(labels=["a", "b"], max_imbalance=20.0)
    raw["preprocess"].update(size=size)
    raw["train"].update(epochs=1, min_epochs=0, batch_size=128)
    raw["register"].update(tracking_uri=f"sqlite:///{project}/mlflow.db", artifact_root=str(project / "artifacts"))
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_stage(step: str, params: Path) -> dict:
    """Run one step in a child process; its peak RSS (GiB) and wall time (s)."""
    medpipe = Path(sys.executable).with_name("medpipe")
    start = time.perf_counter()
    child = subprocess.Popen(
        [str(medpipe), "stage", step, "--params", str(params)],
        cwd=params.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(child.pid, 0)
    error = child.stderr.read().decode(errors="replace")[-2000:]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"medpipe stage {step} failed:\n{error}")
    return {"peak_rss_gib": round(usage.ru_maxrss / 2**20, 3), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workdir", type=Path, help="keep the project here (and reuse its generated data)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = args.workdir.resolve() if args.workdir else Path(tmp)
        start = time.perf_counter()
        if not (project / "data" / "manifest.csv").is_file():
            make_data(project / "data", args.images, args.size)
        generated = round(time.perf_counter() - start, 1)
        params = write_params(project, args.size)
        steps = {step: run_stage(step, params) for step in ("validate", "preprocess", "balance", "train")}
        shard_bytes = sum(f.stat().st_size for f in (project / "outputs" / "preprocess").glob("x_*.npy"))
    peak = max(steps["preprocess"]["peak_rss_gib"], steps["train"]["peak_rss_gib"])
    print(
        json.dumps(
            {
                "bench": "memory",
                "images": args.images,
                "size_px": args.size,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "generate_seconds": generated,
                "steps": steps,
                "shards_gib": round(shard_bytes / 2**30, 3),
                "preprocess_and_epoch_peak_rss_gib": peak,
                "goal_gib": GOAL_GIB,
                "meets_goal": peak <= GOAL_GIB,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
