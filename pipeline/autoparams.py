"""Params found in the data: `validate.labels: auto` (the class names) and `preprocess.color: auto`
(RGB when the images carry colour, gray otherwise).

They are decided once, when a run opens its data and before anything is hashed (lineage, the
up-to-date check, the preprocess cache key), so every step, the MLflow run and the registered model
see the concrete values, and a rebuild from the logged params needs no data-dependent guess.
The colour is judged on a fixed sample of the images (evenly spaced over the sorted paths), which
costs well under a second where a full scan would decode every image before validation does.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.backend import resolve as resolve_backend
from pipeline.config import AUTO, Params
from pipeline.data import discover
from pipeline.errors import ConfigError, DataError, ImageError
from pipeline.imageio import CHROMA_MIN, chroma, read_image
from pipeline.limits import MB
from pipeline.scan import inside_root

COLOR_SAMPLE = 32  # images decoded to judge the colour
COLOR_SHARE = 0.5  # RGB when at least this share of the readable sample carries colour


class Resolved(NamedTuple):
    """The params with every `auto` replaced, and one line per decision (the caller logs them)."""

    params: Params
    notes: list[str]


def sample_color(root: Path, paths: list[str], params: Params) -> tuple[str, int, int]:
    """Judge the colour of a data set from up to COLOR_SAMPLE of its images.

    Args:
        root: The data root.
        paths: The images' paths relative to it (the manifest's).
        params: The params (the size caps bound each decode).

    Returns:
        ("rgb" or "gray", images carrying colour, readable images sampled).
    """
    inside = sorted(p for p in set(paths) if inside_root(root, p))
    picks = (
        [inside[int(i)] for i in np.unique(np.linspace(0, len(inside) - 1, min(COLOR_SAMPLE, len(inside))))]
        if inside
        else []
    )
    caps = params.preprocess
    colored = readable = 0
    for rel in picks:
        try:
            image = read_image(root / rel, b"", None, caps.max_pixels, caps.max_file_mb * MB)
        except ImageError:
            continue  # validation names it
        readable += 1
        colored += chroma(image.pixels) > CHROMA_MIN
    return ("rgb" if readable and colored >= COLOR_SHARE * readable else "gray"), colored, readable


def resolve(params: Params, data_root: Path, labels_from_data: bool = False) -> Resolved:
    """Replace `auto` in params by what the data hold; refuse pinned classes the data do not have.

    Args:
        params: The run's params.
        data_root: The data set (manifest.csv or a folder per class).
        labels_from_data: Take the classes from the data when params pin none of them (`--data` without
            `--set validate.labels`: params.yaml's classes are data.root's). Pinned classes that share some
            with the data stay: a label outside them is then an error naming its files (a typo is not a
            new class), and the error says how to train on the data's classes instead.

    Returns:
        The concrete params and what was decided. Data that cannot be read are left to validation
        (colour: gray), which names the file and the reason, unless their classes were wanted.

    Raises:
        DataError: `validate.labels: auto` and the data set cannot be read (no classes to find).
        ConfigError: Params pin classes of which the data hold none (another task's params): one line with
            both lists and the `--set` that fixes it. A few unknown labels among known ones are left to
            validation, which names each file.
    """
    pinned, color = params.validate_.labels, params.preprocess.color
    try:
        discovery = discover(data_root)
        manifest, found = discovery.manifest, discovery.classes
    except DataError:
        if pinned == AUTO:
            raise  # no classes to find: the one-line reason (e.g. "data folder not found")
        manifest, found = None, []
    notes: list[str] = []
    update: dict[str, object] = {}
    if found and (pinned == AUTO or (labels_from_data and not set(pinned) & set(found))):
        update["validate_"] = params.validate_.model_copy(update={"labels": found})
        notes.append(
            f"classes found in {data_root.name}: {', '.join(found)}"
            + ("" if pinned == AUTO else f" (params pin {', '.join(pinned)} for data.root)")
        )
    elif found and pinned != AUTO and not set(found) & set(pinned):
        raise ConfigError(
            "validate.labels",
            f"params pin the classes {', '.join(pinned)} but {data_root} holds "
            f"{', '.join(found)}: run with --set validate.labels={','.join(found)} (or "
            "validate.labels: auto in params.yaml)",
        )
    if color == AUTO:
        paths = [] if manifest is None else manifest["path"].astype(str).tolist()
        decided, colored, readable = sample_color(data_root, paths, params)
        update["preprocess"] = params.preprocess.model_copy(update={"color": decided})
        notes.append(f"colour: {decided} ({colored} of {readable} sampled images carry colour; preprocess.color: auto)")
    if params.train.backend == AUTO:
        backend = resolve_backend(AUTO)
        update["train"] = params.train.model_copy(update={"backend": backend})
        if backend != "tensorflow":
            notes.append(f"Keras backend: {backend} (KERAS_BACKEND; train.backend: auto)")
    return Resolved(params.model_copy(update=update) if update else params, notes)


def labels_from_data(data_given: bool, overrides: dict[str, str] | None) -> bool:
    """Whether a run may take its classes from the data (see resolve): it names its data (`--data`) and
    does not pin the classes on the command line (`--set validate.labels=...`).

    Args:
        data_given: The run names a data folder other than data.root.
        overrides: Its `--set` overrides.

    Returns:
        True when the classes come from the data.
    """
    return data_given and "validate.labels" not in (overrides or {})
