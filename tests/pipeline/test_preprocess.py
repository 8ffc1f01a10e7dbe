import numpy as np
import pandas as pd
import pytest

from pipeline.config import Params, SplitRatios, Workspace
from pipeline.errors import DataError
from pipeline.preprocess import leakage_groups, load_dataset, load_image, run_step, split_patients


def test_load_image_resizes_and_scales(tiny_data):
    img = load_image(next((tiny_data / "images/normal").glob("*.png")), 20)
    assert img.shape == (20, 20) and img.dtype == np.float32 and 0.0 <= img.min() < img.max() <= 1.0


def test_undecodable_image_names_the_file(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("nope")
    with pytest.raises(DataError, match="x.png: not a decodable image"):
        load_image(bad, 8)


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


def test_run_step_writes_arrays_without_pickles(tmp_path, tiny_data):
    from pipeline import validate

    params = Params.model_validate({"preprocess": {"size": 16}})
    ws = Workspace(base=tmp_path, data_root=tiny_data, out=tmp_path / "out")
    assert validate.run_step(params, ws).success  # validation decides the split
    result = run_step(params, ws)
    data = load_dataset(result.dataset)
    assert data["x_train"].shape[1:] == (16, 16, 1) and data["classes"].dtype.kind == "U"
    assert sum(result.split_sizes.values()) == len(pd.read_csv(tiny_data / "manifest.csv"))
    assert len(data["y_test"]) == result.split_sizes["test"]


def test_images_shared_across_patients_are_grouped():
    patients = pd.Series(["a", "b", "c", "d"])
    hashes = pd.Series(["h1", "h2", "h1", "h3"])  # a and c share an image
    groups = leakage_groups(patients, hashes)
    assert groups[0] == groups[2] and len(set(groups)) == 3
