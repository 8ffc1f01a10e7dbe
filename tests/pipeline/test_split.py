"""pipeline.split: patient-grouped, stratified, seeded splits; leakage groups across patients."""

import pandas as pd

from pipeline.config import SplitRatios
from pipeline.split import leakage_groups, split_patients


def test_split_is_patient_grouped_stratified_and_seeded():
    rows = [(f"{label}{p}_{k}.png", label, f"{label}{p}") for label, n in (("a", 40), ("b", 10), ("c", 3))
            for p in range(n) for k in range(3)]
    manifest = pd.DataFrame(rows, columns=["path", "label", "patient_id"])
    split = split_patients(manifest, SplitRatios(), seed=7)
    assert (manifest.assign(split=split).groupby("patient_id")["split"].nunique() == 1).all()
    for label in "abc":  # every class reaches every split
        assert set(split[manifest.label == label]) == {"train", "val", "test"}
    patients_a = manifest.assign(split=split)[manifest.label == "a"].groupby("split")["patient_id"].nunique()
    assert patients_a.to_dict() == {"train": 28, "val": 6, "test": 6}
    assert split.equals(split_patients(manifest, SplitRatios(), seed=7))
    assert not split.equals(split_patients(manifest, SplitRatios(), seed=8))


def test_images_shared_across_patients_are_grouped():
    patients = pd.Series(["a", "b", "c", "d"])
    hashes = pd.Series(["h1", "h2", "h1", "h3"])  # a and c share an image
    groups = leakage_groups(patients, hashes)
    assert groups[0] == groups[2] and len(set(groups)) == 3
