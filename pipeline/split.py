"""The split: which images train, validate and test, decided once in validation, so that no patient,
no byte copy and no near copy spans two splits."""

import numpy as np
import pandas as pd

from pipeline.config import Params, SplitRatios
from pipeline.errors import DataError

SPLITS = ("train", "val", "test")


def leakage_groups(patients: pd.Series, hashes: pd.Series, near: pd.Series | None = None) -> pd.Series:
    """Group images that must share a split: same patient, the same bytes (sha256) across patients, or
    (with `near`, a near-duplicate group id per image, "" for none) near copies across patients.

    Args:
        patients: Patient id per image.
        hashes: sha256 per image (a unique value where there is none).
        near: Near-duplicate group id per image ("" for none); None: not grouped by near copies.

    Returns:
        Per image, `group`: a representative patient id shared by all images that must share a split.
    """
    parent = {p: p for p in patients}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    keys = [hashes.to_numpy()] + ([] if near is None else [near.to_numpy()])
    for key in keys:
        for name, members in patients.groupby(key).agg(list).items():
            if name == "":
                continue
            for other in members[1:]:
                parent[find(other)] = find(members[0])
    return patients.map(find).rename("group")


def split_patients(manifest: pd.DataFrame, ratios: SplitRatios, seed: int) -> pd.Series:
    """Assign each image a split so that no patient (column `patient_id`, or `group` when given) spans
    two splits, stratified by label.

    Groups take their most frequent label; within each label the shuffled groups are cut by the
    ratios (at least one group per split whenever a label has three or more).

    Args:
        manifest: Images with `label` and `patient_id` (or `group`).
        ratios: The split ratios (val and test are cut; train takes the rest).
        seed: Seed of the shuffle.

    Returns:
        Per image, `split`: train, val or test.
    """
    rng = np.random.default_rng(seed)
    key = manifest["group"] if "group" in manifest else manifest["patient_id"]
    patient_label = manifest.groupby(key.to_numpy())["label"].agg(lambda s: s.mode().iloc[0])
    assignment: dict[str, str] = {}
    for label in sorted(patient_label.unique()):
        patients = sorted(patient_label.index[patient_label == label])
        patients = [patients[i] for i in rng.permutation(len(patients))]
        n = len(patients)
        n_val = max(int(round(n * ratios.val)), 1 if n >= 3 else 0)
        n_test = max(int(round(n * ratios.test)), 1 if n >= 3 else 0)
        for i, pid in enumerate(patients):
            assignment[pid] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return key.map(assignment).rename("split")


def carve_validation(train: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """A validation split carved from a published train split: whole groups (column `group`, else
    `patient_id`), stratified by label like `split_patients`, seeded.

    Args:
        train: The train images (`label` and `group` or `patient_id` columns).
        fraction: The share of each label's groups that becomes val (at least one when a label has two).
        seed: The split seed (preprocess.seed).

    Returns:
        "train" or "val" per image, on `train`'s index.
    """
    rng = np.random.default_rng(seed)
    key = train["group"] if "group" in train else train["patient_id"]
    group_label = train.groupby(key.to_numpy())["label"].agg(lambda s: s.mode().iloc[0])
    val: set[str] = set()
    for label in sorted(group_label.unique()):
        groups = sorted(group_label.index[group_label == label])
        groups = [groups[i] for i in rng.permutation(len(groups))]
        val.update(groups[: max(int(round(len(groups) * fraction)), 1 if len(groups) >= 2 else 0)])
    return pd.Series(np.where(key.isin(val), "val", "train"), index=train.index, name="split")


def _grouped(images: pd.DataFrame) -> pd.DataFrame:
    """The images with the leakage group (patient, byte copy, near copy) each must share a split with."""
    hashes = images["sha256"].where(images["sha256"] != "", images["path"])
    near = images["near_group"].astype(str).where(images["near_group"] >= 0, "") if "near_group" in images else None
    return images.assign(group=leakage_groups(images["patient_id"], hashes, near))


def assign_splits(images: pd.DataFrame, params: Params) -> pd.Series:
    """The manifest's own splits when it has them for every image, else a patient-grouped split.

    A published split with train and test but no val rows (as most are) gets a val split carved from
    its train rows (`carve_validation`, the share preprocess.split.val / (train + val)); one without
    train or without test rows is refused.

    Args:
        images: The image table (`path`, `label`, `patient_id`, `sha256`, `split`, maybe `near_group`).
        params: The run's params (preprocess.split and preprocess.seed).

    Returns:
        train, val or test per image.

    Raises:
        DataError: The manifest's split column has no train or no test rows.
    """
    if not (images["split"] != "").all():
        return split_patients(_grouped(images), params.preprocess.split, params.preprocess.seed)
    present = set(images["split"])
    missing = [s for s in ("train", "test") if s not in present]
    if missing and present <= set(SPLITS):
        raise DataError(
            "manifest.csv",
            f"its split column has no {' and no '.join(missing)} rows (found "
            f"{', '.join(sorted(present))}): give every image train, val or test, or leave the "
            "column empty for medpipe's own patient-grouped split",
        )
    if "val" in present or missing:
        return images["split"]
    ratios = params.preprocess.split
    train = images["split"] == "train"
    carved = carve_validation(_grouped(images)[train], ratios.val / (ratios.train + ratios.val), params.preprocess.seed)
    return images["split"].where(~train, carved)
