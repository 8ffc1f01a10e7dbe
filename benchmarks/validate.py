"""GX validation of a 100,000-row manifest: medpipe's Great Expectations suites vs the same rules in
plain pandas (the baseline). Prints one JSON object per line. Usage: python benchmarks/validate.py [--rows N]
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import argparse
import json
import os
import platform
import time

import numpy as np
import pandas as pd

from pipeline.config import Params
from pipeline.validate import _expectations, derived_tables, run_suites


def image_table(rows: int, labels: list[str]) -> pd.DataFrame:
    """A scan-joined manifest as validation sees it, for `rows` images of rows // 3 patients."""
    rng = np.random.default_rng(0)
    patient = rng.integers(0, rows // 3, rows)
    return pd.DataFrame(
        {
            "path": [f"images/{i:07d}.png" for i in range(rows)],
            "label": np.array(labels)[patient % len(labels)],
            "patient_id": [f"P{p:06d}" for p in patient],
            "split": np.array(["train", "train", "train", "val", "test"])[patient % 5],
            "sha256": [f"{i:064x}" for i in range(rows)],
            "inside_root": True,
            "exists": True,
            "readable": True,
            "reason": [f"images/{i:07d}.png" for i in range(rows)],
            "std": rng.uniform(10, 80, rows),
            "not_blank": True,
            "sharp": True,
            "blur": rng.uniform(50, 500, rows),
        }
    )


def pandas_rules(images: pd.DataFrame, labels: list[str], min_per_class: int) -> bool:
    """The baseline: the same error rules as plain pandas expressions."""
    counts = images["label"].value_counts()
    return bool(
        images["path"].is_unique
        and images["label"].notna().all()
        and images["label"].isin(labels).all()
        and images[["inside_root", "exists", "readable", "not_blank"]].all().all()
        and images["split"].isin(["train", "val", "test"]).all()
        and (images.groupby("patient_id")["split"].nunique() == 1).all()
        and (images.groupby("sha256")["split"].nunique() == 1).all()
        and all(counts.get(lb, 0) >= min_per_class for lb in labels)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    params = Params()
    labels = params.validate_.labels
    images = image_table(args.rows, labels)
    run_suites(
        {"images": images.head(100), **derived_tables(images.head(100), labels, [])}, _expectations(params.validate_)
    )  # warm-up: imports and GX's first-use costs
    start = time.perf_counter()
    checks = run_suites({"images": images, **derived_tables(images, labels, [])}, _expectations(params.validate_))
    t_gx = time.perf_counter() - start
    start = time.perf_counter()
    ok = pandas_rules(images, labels, params.validate_.min_per_class)
    t_pd = time.perf_counter() - start
    assert ok and all(c.success for c in checks if c.severity == "error")
    print(
        json.dumps(
            {
                "bench": "validate",
                "rows": args.rows,
                "expectations": len(checks),
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "gx_seconds": round(t_gx, 2),
                "goal_seconds": 10,
                "pandas_seconds": round(t_pd, 3),
                "speed_ratio": round(t_pd / t_gx, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
