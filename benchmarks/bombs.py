"""Decompression bombs: peak memory of scanning and of decoding for serving, each case in its own process.

Cases: a 20000x20000 PNG (~400 KB), a 40000x40000 PNG (~1.6 MB), a 16384x16384 deflated DICOM
(~530 KB), and a normal 512x512 PNG as the baseline. Each (case, step) runs in a fresh subprocess
that reports its own peak RSS (getrusage ru_maxrss). Prints one JSON object per line:
{"bench": "bombs", "case": ..., "step": "scan" | "serve", "refused": ..., "peak_rss_mib": ..., "reason": ...}
Goal: every case <= 1 GiB. Usage: python benchmarks/bombs.py
"""

from pipeline import configure_offline

configure_offline()  # medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = ("normal_512", "png_20000", "png_40000", "dicom_deflated_16384")
STEPS = ("scan", "serve")


def make(case: str, folder: Path) -> Path:
    """The case's file in `folder`."""
    import cv2
    import numpy as np

    from tests.helpers import bomb_dicom, bomb_png

    if case == "normal_512":
        path = folder / "normal.png"
        cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (512, 512), np.uint8))
        return path
    if case.startswith("png_"):
        return bomb_png(folder / f"{case}.png", int(case.split("_")[1]))
    return bomb_dicom(folder / f"{case}.dcm", 16384, 16384)


def child(step: str, path: Path) -> None:
    """Run one step on one file in this (fresh) process and print its outcome."""
    from pipeline.config import PreprocessParams
    from pipeline.errors import MedpipeError
    from pipeline.scan import scan_file
    from pipeline.serving import model_input

    refused, reason = False, ""
    if step == "scan":
        row = scan_file(path.parent, path.name, b"")
        refused, reason = not row.readable, row.error
    else:
        try:
            model_input(path.read_bytes(), 0, PreprocessParams())
        except MedpipeError as err:
            refused, reason = True, str(err)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"refused": refused, "peak_rss_mib": round(peak, 1), "reason": reason}))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for case in CASES:
            path = make(case, folder)
            for step in STEPS:
                out = (
                    subprocess.run(
                        [sys.executable, __file__, "--child", step, str(path)],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
                result = json.loads(out)
                print(
                    json.dumps(
                        {"bench": "bombs", "case": case, "step": step, "file_kb": path.stat().st_size // 1024, **result}
                    ),
                    flush=True,
                )
            path.unlink()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
