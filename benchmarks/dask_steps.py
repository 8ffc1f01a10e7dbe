"""Data steps on Dask: scan and preprocess throughput with 1 and 2 Dask workers, beside the default runner.

The same 5,000 generated 256-px chest PNGs go through medpipe's scan (hash, decode, statistics) and its
preprocess to 64 px with CLAHE (uint8 shards of `--shard` images), three ways in one run:
- `default`: no Dask (the scan's process pool, the preprocess's decoder threads), as `medpipe run` does;
- `dask_1` and `dask_2`: Prefect's DaskTaskRunner on a LocalCluster of 1 or 2 single-threaded worker
  processes on 127.0.0.1, the scan in chunks of `--chunk` images and one task per shard (flows/data.py).
Each side is timed inside its flow (cluster start-up reported apart). A Prefect server is needed for the
task runs: the temporary one starts unless PREFECT_API_URL names one.

Prints one JSON object (see docs/benchmarks.md). Usage: python benchmarks/dask_steps.py [--images 5000]
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

import numpy as np
from prefect import flow

from flows.data import dask_runner, on_task_runner
from pipeline.config import DaskParams, PreprocessParams
from pipeline.data import synthesize
from pipeline.preprocess import write_split
from pipeline.scan import scan


def steps(root: Path, rels: list[str], out: Path, pp: PreprocessParams, chunk: int, mapper) -> dict:
    """Seconds for a full scan (no cache) and a full preprocess of all images into `out`."""
    start = time.perf_counter()
    table = scan(root, rels, mapper=mapper, chunk_size=chunk)
    scanned = time.perf_counter()
    write_split([root / r for r in rels], np.zeros(len(rels), np.int64), "train", out, pp, mapper or map)
    assert table["readable"].all()
    return {"scan_s": scanned - start, "preprocess_s": time.perf_counter() - scanned}


@flow(name="bench-data-steps", validate_parameters=False)
def on_cluster(root: Path, rels: list[str], out: Path, pp: PreprocessParams, chunk: int) -> dict:
    """The two steps with their units of work as tasks on this flow's (Dask) task runner."""
    return steps(root, rels, out, pp.model_copy(update={"workers": 1}), chunk, on_task_runner)


@flow(name="bench-dask", validate_parameters=False)
def bench(root: Path, rels: list[str], tmp: Path, pp: PreprocessParams, chunk: int) -> dict:
    """Default runner first, then Dask with 1 and 2 workers, each into its own output folder."""
    figures = {"default": steps(root, rels, tmp / "default", pp, chunk, None)}
    for workers in (1, 2):
        (tmp / f"dask_{workers}").mkdir()
        start = time.perf_counter()
        runner = dask_runner(DaskParams(workers=workers))
        inner = on_cluster.with_options(task_runner=runner)(root, rels, tmp / f"dask_{workers}", pp, chunk)
        inner["startup_s"] = time.perf_counter() - start - inner["scan_s"] - inner["preprocess_s"]
        figures[f"dask_{workers}"] = inner
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--source", type=int, default=256, help="side of the generated chest PNGs")
    parser.add_argument("--chunk", type=int, default=1024, help="images per scan task (params dask.chunk_size)")
    parser.add_argument("--shard", type=int, default=1024, help="images per shard (params preprocess.shard_size)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthesize(Path(tmp) / "data", n_patients=args.images // 3 + 50, size=args.source, seed=3)
        rels = list(manifest["path"][: args.images])
        (Path(tmp) / "default").mkdir()
        pp = PreprocessParams(size=64, clahe={"enabled": True}, shard_size=args.shard)
        figures = bench(Path(tmp) / "data", rels, Path(tmp), pp, args.chunk)
        same = all(
            np.array_equal(np.load(Path(tmp) / "default" / f.name), np.load(f))
            for side in ("dask_1", "dask_2")
            for f in sorted((Path(tmp) / side).glob("x_*.npy"))
        )
    n = len(rels)
    rates = {
        side: {
            "scan_img_per_s": round(n / f["scan_s"]),
            "preprocess_img_per_s": round(n / f["preprocess_s"]),
            **({"cluster_startup_s": round(f["startup_s"], 1)} if "startup_s" in f else {}),
        }
        for side, f in figures.items()
    }
    print(
        json.dumps(
            {
                "bench": "dask",
                "images": n,
                "source_px": args.source,
                "size_px": 64,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "chunk": args.chunk,
                "shard": args.shard,
                **rates,
                "scan_ratio_2_vs_1": round(figures["dask_1"]["scan_s"] / figures["dask_2"]["scan_s"], 2),
                "preprocess_ratio_2_vs_1": round(
                    figures["dask_1"]["preprocess_s"] / figures["dask_2"]["preprocess_s"], 2
                ),
                "shards_identical": same,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
