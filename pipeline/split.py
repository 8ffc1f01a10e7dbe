"""The split: which images train, validate and test, decided once in validation, so that no patient,
no byte copy and no near copy spans two splits."""

import numpy as np
import pandas as pd

from pipeline.config import Params, SplitRatios

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


def assign_splits(images: pd.DataFrame, params: Params) -> pd.Series:
    """The manifest's own splits when it has them for every image, else a patient-grouped split.

    Args:
        images: The scanned manifest (split, patient_id, sha256, path[, near_group]).
        params: The params (preprocess.split ratios and seed).

    Returns:
        Per image, its split.
    """
    if (images["split"] != "").all():
        return images["split"]
    hashes = images["sha256"].where(images["sha256"] != "", images["path"])
    near = images["near_group"].astype(str).where(images["near_group"] >= 0, "") if "near_group" in images else None
    grouped = images.assign(group=leakage_groups(images["patient_id"], hashes, near))
    return split_patients(grouped, params.preprocess.split, params.preprocess.seed)
