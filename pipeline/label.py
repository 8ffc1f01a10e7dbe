"""The labelling loop: suggestions for unlabelled images (a review queue for experts, least certain first) and
the import of the reviewed labels into the manifest, with provenance."""

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd

from pipeline.config import NearDuplicateParams, PreprocessParams
from pipeline.data import PROVENANCE_COLUMNS, read_table
from pipeline.errors import DataError, ImageError
from pipeline.imageio import IMAGE_SUFFIXES
from pipeline.scan import inside_root


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


def unlabelled_files(root: Path) -> list[Path]:
    """The data set's unlabelled images (empty label in manifest.csv, or the `unlabelled/` folder).

    Args:
        root: The data root.

    Returns:
        Their files, in manifest order.

    Raises:
        DataError: the data set cannot be read, or an unlabelled row's path lies outside the data root.
    """
    from pipeline.data import MANIFEST, discover

    rels = discover(root).unlabelled["path"].tolist()
    outside = [rel for rel in rels if not inside_root(root, rel)]
    if outside:
        raise DataError(root / MANIFEST, f"{outside[0]}: path outside the data root")
    return [root / rel for rel in rels]


SUGGEST_BATCH = 64  # images per forward pass while ranking


def suggest(
    model,
    classes: list[str],
    files: list[Path],
    root: Path,
    thumbs: Path | None,
    preprocessing: PreprocessParams,
    near: NearDuplicateParams | None = None,
    top: int | None = None,
) -> pd.DataFrame:
    """The review queue: predicted label, confidence and entropy per image (unreadable ones get their error),
    most uncertain first, and with `near`, one image of each group of near copies per round (diversity: the
    queue is not a run of copies of one hard case).

    The images are ranked by batched forward passes; Grad-CAM (a gradient pass per image) runs only for the
    thumbnails, which the first `top` images of the queue get: the ones an expert reviews first.

    Args:
        model: The Keras model.
        classes: Class names in output order.
        files: The images.
        root: The folder their table paths are relative to.
        thumbs: Where Grad-CAM thumbnails go; None: none written.
        preprocessing: The preprocessing (fitted to the model's input).
        near: The near-duplicate params grouping copies (pipeline.near_duplicates on the model's input); None:
            by entropy alone.
        top: How many of the queue's first images get a thumbnail; None: all of them.

    Returns:
        Columns path, suggested_label, confidence, entropy, copies (its near-copy group's first path, "" when
        none), label (empty, for the expert), gradcam (the thumbnail, "" for none), error; unreadable first, then
        by round and entropy.
    """
    from pipeline.model import input_params
    from pipeline.near_duplicates import find_groups, fingerprints, small_images
    from pipeline.preprocess import load_image

    preprocessing, hashes = input_params(model, preprocessing), []
    rows: list[list] = []  # path, suggested_label, confidence, entropy, gradcam, error
    batch: list[tuple[int, np.ndarray]] = []  # (row, image) waiting for a forward pass

    def classify() -> None:  # the batch's rows get their predicted label, confidence and entropy
        proba = np.asarray(model(np.stack([x for _, x in batch]).astype(np.float32), training=False))
        for (i, _), p, h in zip(batch, proba, entropy(proba)):
            rows[i][1:4] = [classes[int(p.argmax())], float(p.max()), float(h)]
        batch.clear()

    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            x = load_image(path, preprocessing)
        except ImageError as err:
            rows.append([rel, "", np.nan, np.nan, "", err.reason])
            hashes.append(("", ""))
            continue
        hashes.append(fingerprints(x.mean(axis=-1) * 255.0) if near is not None else ("", ""))
        rows.append([rel, "", np.nan, np.nan, "", ""])
        batch.append((len(rows) - 1, x))
        if len(batch) == SUGGEST_BATCH:
            classify()
    if batch:
        classify()
    table = pd.DataFrame(rows, columns=["path", "suggested_label", "confidence", "entropy", "gradcam", "error"])
    group = np.arange(len(table))
    if near is not None and len(table):
        side = np.full(len(table), preprocessing.size)
        found = find_groups(
            [h[0] for h in hashes],
            near.threshold,
            [h[1] for h in hashes] if near.windows else None,
            small_images(side, side),
            near.small,
        )
        group = np.where(found.group >= 0, found.group, group)
    table["copies"] = np.where(np.bincount(group, minlength=len(table))[group] > 1, table["path"].to_numpy()[group], "")
    table["label"] = ""  # for the expert to fill in; `medpipe label import` reads it
    columns = ["path", "suggested_label", "confidence", "entropy", "copies", "label", "gradcam", "error"]
    table = table.iloc[review_order(table["entropy"].to_numpy(), group)][columns].reset_index(drop=True)
    if thumbs is not None:
        readable = table.index[table["error"] == ""]
        for i in readable[: len(readable) if top is None else top]:
            rel = table.loc[i, "path"]
            table.loc[i, "gradcam"] = _thumbnail(root / rel, rel, thumbs, model, preprocessing)
    return table


def _thumbnail(path: Path, rel: str, thumbs: Path, model, preprocessing: PreprocessParams) -> str:
    """Write the Grad-CAM overlay of one image (its predicted class) into `thumbs`; returns its path."""
    from pipeline.explain import grad_cam, overlay
    from pipeline.preprocess import load_image

    x = load_image(path, preprocessing)
    thumbs.mkdir(parents=True, exist_ok=True)
    thumb = str(thumbs / (rel.replace("/", "__") + ".cam.png"))
    cv2.imwrite(thumb, overlay(x, grad_cam(model, x).heatmap, scale=2))
    return thumb


def review_order(uncertainty: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Row order of the review queue: unreadable (NaN) first, then in rounds, each group's most uncertain
    image not yet queued, most uncertain first within a round.

    Args:
        uncertainty: (N,) entropy per image; NaN for an unreadable one.
        group: (N,) a group id per image (near copies share one; others their own).

    Returns:
        (N,) row indexes.
    """
    key = np.where(np.isnan(uncertainty), np.inf, uncertainty)
    by_uncertainty = np.argsort(-key, kind="stable")
    rank = np.zeros(len(group), np.int64)
    seen: dict[int, int] = {}
    for row in by_uncertainty:
        rank[row] = seen.get(int(group[row]), 0)
        seen[int(group[row])] = rank[row] + 1
    return np.lexsort((np.arange(len(group)), -key, rank))


MAX_REVIEW_MB = 64  # a reviewed CSV larger than this is refused before it is read
SOURCE_EXPERT = "expert"  # label_source of a label an expert gave or confirmed (label import)
SOURCE_DATA = "data"  # label_source of a label the data set came with (set when provenance is first recorded)


class LabelImport(NamedTuple):
    """What `merge_reviewed` did: the new manifest, unlabelled images that got a label, and labels confirmed."""

    manifest: pd.DataFrame
    labelled: int
    confirmed: int


def read_reviewed(path: Path) -> pd.DataFrame:
    """Read a reviewed CSV (`medpipe label suggest`'s queue with the `label` column filled in).

    Args:
        path: The CSV: columns path and label, optionally reviewed_by; other columns are ignored.

    Returns:
        Its rows as strings.

    Raises:
        DataError: the file is missing, too large, not a readable CSV, or lacks `path` or `label`.
    """
    if not path.is_file():
        raise DataError(path, "reviewed CSV not found")
    if path.stat().st_size > MAX_REVIEW_MB * 2**20:
        raise DataError(path, f"larger than {MAX_REVIEW_MB} MB; a reviewed CSV lists paths and labels")
    return read_table(path, "path,label[,reviewed_by]")


def merge_reviewed(
    reviewed: pd.DataFrame,
    source: Path,
    root: Path,
    manifest: pd.DataFrame,
    classes: list[str],
    reviewer: str,
    when: str,
) -> LabelImport:
    """Merge reviewed labels into a manifest, with provenance; all rows are checked before anything changes.

    A reviewed row with an empty label is not reviewed yet and is skipped. A row gives an unlabelled image its
    label, or confirms the label an image already has (its provenance becomes the expert's).

    Args:
        reviewed: The reviewed rows (read_reviewed).
        source: The reviewed CSV (named in errors).
        root: The data root (reviewed paths must stay inside it).
        manifest: Every row of the data set (path, label, ...; unlabelled ones with an empty label), as strings.
        classes: The labels allowed.
        reviewer: Who reviewed, where a row has no `reviewed_by` of its own.
        when: When (ISO 8601), recorded as `reviewed_at`.

    Returns:
        The manifest with the labels and PROVENANCE_COLUMNS set (label_source `data` for labels it already
        had without provenance), and the counts.

    Raises:
        DataError: (file `source`) a row names a path outside the data root or not in the data set, a path
            twice, a label not in `classes`, or a label other than the one the image has.
    """
    out = manifest.reset_index(drop=True)
    for column in PROVENANCE_COLUMNS:
        if column not in out.columns:
            out[column] = ""
    out.loc[(out["label"] != "") & (out["label_source"] == ""), "label_source"] = SOURCE_DATA
    where = {p: k for k, p in enumerate(out["path"])}
    reviewed = reviewed.reset_index(drop=True)
    done = reviewed[reviewed["label"].str.strip() != ""]
    by = done["reviewed_by"] if "reviewed_by" in done.columns else pd.Series("", index=done.index)
    seen: set[str] = set()
    rows, labels, names = [], [], []
    for k, path, label, name in zip(done.index, done["path"], done["label"].str.strip(), by):
        where_ = f"line {k + 2}: {path}"  # the CSV's line: its header is line 1
        if not inside_root(root, path):
            raise DataError(source, f"{where_}: path outside the data root (use paths relative to it)")
        if path in seen:
            raise DataError(source, f"{where_}: listed twice")
        seen.add(path)
        if path not in where:
            raise DataError(source, f"{where_}: not an image of this data set (manifest.csv or its folders)")
        if label not in classes:
            raise DataError(source, f"{where_}: unknown label {label!r} (labels: {', '.join(classes)})")
        had = out.at[where[path], "label"]
        if had not in ("", label):
            raise DataError(source, f"{where_}: already labelled {had!r}; relabel in manifest.csv, not by import")
        rows.append(where[path])
        labels.append(label)
        names.append(name.strip() or reviewer)
    labelled = int((out.loc[rows, "label"] == "").sum()) if rows else 0
    if rows:
        out.loc[rows, "label"] = labels
        out.loc[rows, "label_source"] = SOURCE_EXPERT
        out.loc[rows, "reviewed_by"] = names
        out.loc[rows, "reviewed_at"] = when
    return LabelImport(out, labelled, len(rows) - labelled)


def manifest_rows(root: Path) -> pd.DataFrame:
    """Every row of the data set as a manifest: manifest.csv with all its columns, or the class folders and
    `unlabelled/` (label_source `folder` for the folders' labels).

    Args:
        root: The data root.

    Returns:
        The rows as strings.

    Raises:
        DataError: the data set cannot be read (pipeline.data.discover).
    """
    from pipeline.data import MANIFEST, discover

    if (root / MANIFEST).is_file():
        return read_table(root / MANIFEST, "path,label[,patient_id][,split]")
    found = discover(root)
    labelled = found.manifest.assign(label_source="folder")
    return pd.concat([labelled, found.unlabelled.assign(label_source="")], ignore_index=True)


def write_manifest(root: Path, manifest: pd.DataFrame) -> Path:
    """Write `root/manifest.csv` atomically (a temporary file renamed over it).

    Args:
        root: The data root.
        manifest: The rows.

    Returns:
        The manifest's path.
    """
    import os
    import tempfile

    from pipeline.data import MANIFEST

    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest.", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            manifest.to_csv(f, index=False, lineterminator="\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return root / MANIFEST


def import_labels(reviewed: Path, root: Path, classes: list[str], reviewer: str, when: str) -> LabelImport:
    """`medpipe label import`: merge a reviewed CSV into the data root's manifest.csv (written if the data set
    is class folders), with provenance; nothing is written unless every row is valid.

    Args:
        reviewed: The reviewed CSV (path relative to the data root, label[, reviewed_by]).
        root: The data root.
        classes: The labels allowed.
        reviewer: Who reviewed, for rows without `reviewed_by`.
        when: When (ISO 8601).

    Returns:
        What was merged (the manifest written).

    Raises:
        DataError: the CSV or a row of it is invalid (see read_reviewed, merge_reviewed), or the data set cannot
            be read.
    """
    merged = merge_reviewed(read_reviewed(reviewed), reviewed, root, manifest_rows(root), classes, reviewer, when)
    if merged.labelled or merged.confirmed:
        write_manifest(root, merged.manifest)
    return merged
