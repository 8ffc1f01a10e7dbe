"""pipeline.plots: each figure is a real, reproducible PNG, also for the edge cases of a small test split."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import plots

HISTORY = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.7], "val_roc_auc": [0.6, 0.7, 0.8]}
FIGURES = {
    "roc_pr": lambda y, proba, path: plots.roc_pr_curves(y, proba, ["a", "b", "c"], path),
    "reliability": lambda y, proba, path: plots.reliability(y, proba, 10, path),
    "curves": lambda y, proba, path: plots.training_curves(HISTORY, path),
    "confusion": lambda y, proba, path: plots.plot_confusion(y, proba.argmax(axis=1), ["a", "b", "c"], path),
}


def _picture(path: Path) -> np.ndarray:
    """The PNG decoded; fails unless it is an image of some size with more than one colour in it."""
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable image"
    assert min(image.shape[:2]) >= 200, image.shape
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 2, "a blank figure"
    return image


@pytest.mark.parametrize("figure", FIGURES)
def test_each_figure_is_a_reproducible_png_at_the_given_path(tmp_path, multiclass, figure):
    path = FIGURES[figure](*multiclass, tmp_path / f"{figure}.png")
    assert path == tmp_path / f"{figure}.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _picture(path)
    again = FIGURES[figure](*multiclass, tmp_path / "again.png")
    assert again.read_bytes() == path.read_bytes()  # no timestamp, no software version in the file


@pytest.mark.filterwarnings("ignore:No artists with labels found")  # a one-class split has no curve to label
@pytest.mark.parametrize("y", [[0, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
def test_roc_pr_of_a_binary_or_one_class_split_is_still_drawn(tmp_path, y):
    proba = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9], [0.5, 0.5], [0.45, 0.55]])
    _picture(plots.roc_pr_curves(np.array(y), proba, ["normal", "nodule"], tmp_path / "roc.png"))


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no 0/0 for a class that never occurs
def test_confusion_with_a_class_absent_from_the_split(tmp_path):
    _picture(plots.plot_confusion(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b", "c"], tmp_path / "cm.png"))


def test_reliability_with_more_bins_than_images(tmp_path):
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    _picture(plots.reliability(np.array([0, 1, 1]), proba, 20, tmp_path / "rel.png"))


def test_training_curves_of_one_epoch_with_undefined_validation_metrics(tmp_path):
    history = {"loss": [0.7], "val_loss": [float("nan")], "val_roc_auc": [float("nan")]}  # e.g. a one-class val split
    _picture(plots.training_curves(history, tmp_path / "curves.png"))
