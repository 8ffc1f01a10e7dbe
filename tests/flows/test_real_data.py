"""`medpipe run --data DIR` on real images: a JPEG folder tree (4 classes, mixed modes and sizes) and
MedMNIST imported with import-npz. Both come from ../shared/datasets (skipped when it is absent)."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.helpers import SHARED_DATASETS, write_params

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SHARED_DATASETS / "medmnist").is_dir(), reason="../shared/datasets/medmnist (real MedMNIST files) absent"
    ),
]
BREAST = SHARED_DATASETS / "medmnist" / "breastmnist.npz"
PNEUMONIA = SHARED_DATASETS / "medmnist" / "pneumoniamnist_trainsubsampled.npz"


def _jpeg_tree(out, n_per_class=40):
    """Real ultrasound and X-ray images as JPEGs: 4 classes; gray, RGB and odd sizes mixed."""
    rng = np.random.default_rng(0)
    classes = {
        "breast_malignant": (BREAST, 0),
        "breast_benign": (BREAST, 1),
        "chest_normal": (PNEUMONIA, 0),
        "chest_pneumonia": (PNEUMONIA, 1),
    }
    for label, (source, y) in classes.items():
        with np.load(source) as npz:
            images = npz["train_images"][npz["train_labels"].ravel() == y][:n_per_class]
        for i, img in enumerate(images):
            if i % 3 == 1:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)  # stored as 3-channel colour JPEG
            if i % 4 == 2:
                img = cv2.resize(img, (int(rng.integers(20, 60)),) * 2)
            folder = out / label / ("batch2" if i % 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{label}_{i:03d}.jpg"), img)
    return list(classes)


def test_jpeg_folder_tree_with_mixed_modes(prefect_harness, tmp_path):
    from flows.training import training_flow

    labels = _jpeg_tree(tmp_path / "jpegs")
    modes = {cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ndim for p in (tmp_path / "jpegs").rglob("*.jpg")}
    assert modes == {2, 3}
    write_params(tmp_path, validate={"labels": labels}, preprocess={"size": 28})
    summary = training_flow(params_file=str(tmp_path / "params.yaml"), data=str(tmp_path / "jpegs"))
    assert summary.version == 1
    assert sum(summary.split_sizes.values()) == 160
    assert summary.test_metrics["roc_auc"] > 0.5


def test_imported_medmnist_keeps_official_splits_and_catches_its_leak(prefect_harness, tmp_path):
    from flows.training import training_flow
    from pipeline.data import import_npz

    write_params(tmp_path, validate={"labels": ["malignant", "benign"]}, preprocess={"size": 28})
    # BreastMNIST as published has one image in both train and test (with different labels)
    import_npz(BREAST, tmp_path / "leaky", ["malignant", "benign"])
    state = training_flow(params_file=str(tmp_path / "params.yaml"), data=str(tmp_path / "leaky"), return_state=True)
    assert state.is_failed()
    assert "each image (sha256) in one split" in state.message

    manifest, dropped = import_npz(BREAST, tmp_path / "breast", ["malignant", "benign"], drop_duplicates=True)
    assert dropped == 1
    # it also has near copies across its official splits: an error by default ...
    state = training_flow(params_file=str(tmp_path / "params.yaml"), data=str(tmp_path / "breast"), return_state=True)
    assert state.is_failed()
    assert "each near-duplicate group" in state.message
    # ... or, with action drop, their val/test members leave (train is kept whole)
    summary = training_flow(
        params_file=str(tmp_path / "params.yaml"),
        data=str(tmp_path / "breast"),
        overrides={"validate.near_duplicates.action": "drop"},
    )
    dropped = pd.read_csv(tmp_path / "outputs/validate/duplicates_dropped.csv")
    assert summary.split_sizes["train"] == 546
    assert len(dropped) > 0
    assert set(dropped["split"]) <= {"val", "test"}
    assert summary.split_sizes["val"] + summary.split_sizes["test"] == 78 + 155 - len(dropped)
    splits = pd.read_csv(tmp_path / "outputs/validate/splits.csv")
    assert not set(dropped["path"]) & set(splits["path"])
    metrics = json.loads((tmp_path / "outputs/metrics.json").read_text())
    assert 0 < metrics["threshold"] <= 1
    assert 0 <= metrics["test_sensitivity_at_threshold"] <= 1
