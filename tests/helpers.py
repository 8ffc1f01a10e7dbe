"""Shared test constants and helpers (no side effects: conftest.py does the isolation)."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Tiny but real: 30 patients (~90 images) of 32x32, two epochs.
TINY_PATIENTS, TINY_SIZE = 30, 32
TINY_OVERRIDES = {"preprocess": {"size": TINY_SIZE}, "train": {"epochs": 2, "batch_size": 16, "patience": 2, "min_epochs": 0}}


def write_params(folder: Path, **sections: dict) -> Path:
    """Write the repo's params.yaml, with the tiny overrides and `sections` merged in, to folder."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in {**TINY_OVERRIDES, **sections}.items():
        raw[name] = {**raw.get(name, {}), **values}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
