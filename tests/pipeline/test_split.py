"""pipeline.split: patient-grouped, stratified, seeded splits; leakage groups across patients."""

import pandas as pd

from pipeline.config import SplitRatios
from pipeline.split import leakage_groups, split_patients


def test_split_is_patient_grouped_stratified_and_seeded():
    rows = [
        (f"{label}{p}_{k}.png", label, f"{label}{p}")
        for label, n in (("a", 40), ("b", 10), ("c", 3))
        for p in range(n)
        for k in range(3)
    ]
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
    assert groups[0] == groups[2]
    assert len(set(groups)) == 3


def _train(n_per_label: dict[str, int]) -> pd.DataFrame:
    rows = [
        (f"{label}{p}_{k}.png", label, f"{label}{p}")
        for label, n in n_per_label.items()
        for p in range(n)
        for k in range(2)
    ]
    return pd.DataFrame(rows, columns=["path", "label", "patient_id"])


def test_carved_validation_takes_whole_patients_per_label_and_is_seeded():
    from pipeline.split import carve_validation

    train = _train({"a": 20, "b": 4})
    split = carve_validation(train, 0.25, seed=3)
    assert (train.assign(split=split).groupby("patient_id")["split"].nunique() == 1).all()
    val_patients = train[split == "val"].groupby("label")["patient_id"].nunique().to_dict()
    assert val_patients == {"a": 5, "b": 1}
    assert split.equals(carve_validation(train, 0.25, seed=3))
    assert not split.equals(carve_validation(train, 0.25, seed=4))


def test_assign_splits_keeps_a_full_published_split_and_carves_a_missing_val():
    from pipeline.config import Params
    from pipeline.split import assign_splits

    images = _train({"a": 10, "b": 10}).assign(sha256=lambda d: d["path"], split="train")
    images.loc[images.index % 4 == 0, "split"] = "test"
    carved = assign_splits(images, Params())
    assert set(carved) == {"train", "val", "test"}
    assert (carved[images["split"] == "test"] == "test").all()
    full = images.assign(split=images["split"].where(images.index % 4 != 1, "val"))
    assert assign_splits(full, Params()).equals(full["split"])
