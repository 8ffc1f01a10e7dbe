"""Label suggestions for unlabelled images: a review queue for experts, least certain first."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.config import PreprocessParams
from pipeline.errors import ImageError
from pipeline.imageio import IMAGE_SUFFIXES


def entropy(proba: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of class probabilities.

    Args:
        proba: (N, classes) probabilities.

    Returns:
        (N,) entropies.
    """
    p = np.clip(proba, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def image_files(folder: Path) -> list[Path]:
    """Every PNG, JPEG or DICOM under a folder, sorted.

    Args:
        folder: The folder, searched recursively.

    Returns:
        The image files, sorted.
    """
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def suggest(
    model, classes: list[str], files: list[Path], root: Path, thumbs: Path | None, preprocessing: PreprocessParams
) -> pd.DataFrame:
    """Predicted label, confidence and entropy per image (unreadable ones get their error), most uncertain first.

    Args:
        model: The Keras model.
        classes: Class names in output order.
        files: The images.
        root: The folder their table paths are relative to.
        thumbs: Where Grad-CAM thumbnails go; None: none written.
        preprocessing: The preprocessing (fitted to the model's input).

    Returns:
        Columns path, suggested_label, confidence, entropy, gradcam, error; unreadable first, then by entropy,
        highest first.
    """
    from pipeline.explain import grad_cam, overlay
    from pipeline.model import input_params
    from pipeline.preprocess import load_image

    preprocessing, rows = input_params(model, preprocessing), []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            x = load_image(path, preprocessing)
        except ImageError as err:
            rows.append((rel, "", np.nan, np.nan, "", err.reason))
            continue
        cam, proba = grad_cam(model, x)
        thumb = ""
        if thumbs is not None:
            thumbs.mkdir(parents=True, exist_ok=True)
            thumb = str(thumbs / (rel.replace("/", "__") + ".cam.png"))
            cv2.imwrite(thumb, overlay(x, cam, scale=2))
        rows.append((rel, classes[int(proba.argmax())], float(proba.max()), float(entropy(proba[None])[0]), thumb, ""))
    table = pd.DataFrame(rows, columns=["path", "suggested_label", "confidence", "entropy", "gradcam", "error"])
    return table.sort_values(["entropy", "path"], ascending=[False, True], na_position="first", ignore_index=True)
