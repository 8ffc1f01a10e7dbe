"""Data validation with Great Expectations 1.x: errors stop the flow, warnings are recorded.

The scan table (one row per image) and small derived tables (per patient, per image hash, per
class) are checked by real GX expectation suites run through Checkpoints on an ephemeral
context. The outcome is written as JSON, Markdown and a self-contained HTML page that reads
offline (GX's own Data Docs pull their CSS from CDNs). The split is decided here, so the
checks can prove that no patient and no image crosses splits.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from pipeline import faults
from pipeline.config import NearDuplicateParams, Params, PreprocessParams, ValidateParams, Workspace
from pipeline.data import SUBGROUP_PREFIX, discover, with_subgroups
from pipeline.errors import DataError
from pipeline.imageio import CHROMA_MIN
from pipeline.limits import MB
from pipeline.near_duplicates import combined_distance, find_groups, hamming, near_pairs, parse, small_images
from pipeline.outputs import read_result, replace_dir
from pipeline.scan import Mapper, inside_root, scan
from pipeline.split import SPLITS, assign_splits

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Check:
    """One expectation's outcome, with a few offending values for the report."""

    name: str
    success: bool
    unexpected: list[str] = field(default_factory=list)
    severity: str = "error"


@dataclass
class ValidationReport:
    """What validation found: overall success (errors only), each check, and where the reports are."""

    success: bool
    checks: list[Check]
    n_images: int
    class_counts: dict[str, int]
    report_md: str = ""
    near_duplicates: dict = field(default_factory=dict)  # what near_duplicate_summary found (report.json)
    color: str = ""  # the colour the images are trained in (preprocess.color, resolved)
    n_unlabelled: int = 0  # images without a label (the pool `medpipe label suggest` ranks): in no split
    pool: dict = field(default_factory=dict)  # pool_summary of the unlabelled images (pool.csv), {} without any

    @property
    def failed(self) -> list[Check]:
        """The failed checks of severity error.

        Returns:
            Each error check that did not succeed, in check order.
        """
        return [c for c in self.checks if not c.success and c.severity == "error"]

    @property
    def warnings(self) -> list[Check]:
        """The failed checks of severity warning.

        Returns:
            Each warning check that did not succeed, in check order.
        """
        return [c for c in self.checks if not c.success and c.severity == "warning"]

    def summary(self) -> str:
        """One line: how many error checks failed, with the first offending value.

        Returns:
            "<n> checks passed on <m> images" or "<k> of <n> checks failed: <first> (e.g. <value>)", with the
            number of warnings appended when there are any.
        """
        n_errors = sum(c.severity == "error" for c in self.checks)
        warned = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        if self.success:
            return f"{n_errors} checks passed on {self.n_images} images{warned}"
        first = self.failed[0]
        example = f" (e.g. {first.unexpected[0]})" if first.unexpected else ""
        return f"{len(self.failed)} of {n_errors} checks failed: {first.name}{example}{warned}"

    @property
    def folder(self) -> Path:
        """The folder holding the reports and, for readable data, the split table (splits.csv)."""
        return Path(self.report_md).parent

    @property
    def pool_csv(self) -> Path:
        """The unlabelled pool: path, patient_id, sha256, excluded (empty for the images pseudo-labelling may use)."""
        return self.folder / POOL_CSV

    @property
    def splits_csv(self) -> Path:
        """The split table the later steps read: path, label, patient_id, split, sha256, fingerprint, near_train."""
        return self.folder / "splits.csv"

    def split_table(self) -> pd.DataFrame:
        """The split table, every column as text.

        Returns:
            One row per image, in the order the later steps use.
        """
        return pd.read_csv(self.splits_csv, dtype=str, keep_default_na=False)


def failure(report: "ValidationReport", data_root: Path) -> DataError:
    """The one-line error for a failed validation: `<data root>: <what failed>; report: <path>`.

    Args:
        report: The failed validation's report (its summary and report_md are quoted).
        data_root: The data set validated.

    Returns:
        The DataError to raise (not raised here). When labels outside validate.labels failed the check
        "label known", it also names the data's classes and how to train on them.
    """
    hint = ""
    if any(c.name == "label known" for c in report.failed):
        try:
            found = ",".join(discover(data_root).classes)
            hint = f"; the data hold the classes {found}: to train on them, --set validate.labels={found}"
        except DataError:
            pass
    return DataError(data_root, f"data validation failed, {report.summary()}{hint}; report: {report.report_md}")


def image_table(
    manifest: pd.DataFrame,
    root: Path,
    cache: Path | None,
    validation: ValidateParams,
    project: Path = Path("."),
    mapper: Mapper | None = None,
    chunk_size: int = 1024,
    preprocessing: PreprocessParams = PreprocessParams(),
) -> pd.DataFrame:
    """Manifest joined with the scan: per-image facts the expectations test (images over `preprocessing`'s caps,
    max_pixels and max_file_mb, are unreadable).

    Args:
        manifest: The discovered manifest (path, label, split, patient_id, ...), one row per image.
        root: The data root the paths are relative to.
        cache: The scan cache CSV (None: no cache).
        validation: The validate params (blank_std, blur_min).
        project: The project root the scan cache names paths against.
        mapper: Maps the scan over chunks (None: in this process).
        chunk_size: Images per scan chunk.
        preprocessing: The preprocess params (max_pixels, max_file_mb).

    Returns:
        The manifest with the scan's columns and inside_root, exists, reason, not_blank and sharp; patient_id
        filled from patient_key or the path, and no fingerprint or windows for unreadable images.
    """
    table = scan(
        root,
        manifest["path"].tolist(),
        cache=cache,
        project=project,
        mapper=mapper,
        chunk_size=chunk_size,
        max_pixels=preprocessing.max_pixels,
        max_bytes=preprocessing.max_file_mb * MB,
    ).drop(columns="path")
    df = pd.concat([manifest.reset_index(drop=True), table], axis=1)
    df["inside_root"] = [inside_root(root, p) for p in df["path"]]
    df["exists"] = [ok and (root / p).is_file() for ok, p in zip(df["inside_root"], df["path"])]
    df["reason"] = [f"{p}: {e}" if e else p for p, e in zip(df["path"], df["error"])]
    df["patient_id"] = [pid or key or p for pid, key, p in zip(df["patient_id"], df["patient_key"], df["path"])]
    df["not_blank"] = ~df["readable"] | (df["std"] >= validation.blank_std)
    df["sharp"] = ~df["readable"] | (df["blur"] >= validation.blur_min)
    df["fingerprint"] = df["fingerprint"].where(df["readable"], "")
    df["windows"] = df["windows"].where(df["readable"], "")
    return df.drop(columns=["patient_key", "error"])


POOL_CSV = "pool.csv"
POOL_COLUMNS = ["path", "patient_id", "sha256", "excluded"]


def pool_exclusions(pool: pd.DataFrame, images: pd.DataFrame, near: NearDuplicateParams) -> list[str]:
    """Why each unlabelled image may not be learnt from ("" when it may): unreadable, blank, a val/test
    patient's, or an exact or near copy of a val/test image (what training sees must not leak into
    what it is scored on).

    Args:
        pool: The unlabelled images' table (image_table).
        images: The labelled images' table, splits assigned.
        near: The near-duplicate params (threshold, windows, small threshold; off: exact copies only).

    Returns:
        One reason per pool row, "" for a usable one.
    """
    held = images[images["split"].isin(["val", "test"])]
    patients, hashes = set(held["patient_id"]), set(held["sha256"])
    near_held = pd.Series(False, index=range(len(pool)))
    if near.enabled and len(pool) and len(held):
        both = pd.concat([held, pool], ignore_index=True)
        windows = both["windows"].tolist() if near.windows else None
        small = small_images(both["width"], both["height"])
        group = find_groups(both["fingerprint"].tolist(), near.threshold, windows, small, near.small).group
        held_groups = set(group[: len(held)]) - {-1}
        near_held = pd.Series([g in held_groups for g in group[len(held) :]])
    reasons = []
    for row, is_near in zip(pool.itertuples(index=False), near_held):
        if not row.readable:
            reasons.append(f"unreadable: {row.reason}")
        elif not row.not_blank:
            reasons.append("blank")
        elif row.patient_id in patients:
            reasons.append("patient in val/test")
        elif row.sha256 in hashes:
            reasons.append("copy of a val/test image")
        elif is_near:
            reasons.append("near copy of a val/test image")
        else:
            reasons.append("")
    return reasons


def pool_summary(pool: pd.DataFrame) -> dict:
    """The report's entry on the unlabelled pool: how many, how many usable, excluded per reason.

    Args:
        pool: The pool table with its `excluded` column.

    Returns:
        {"n", "usable", "excluded": {reason: count}} (unreadable ones counted under `unreadable`).
    """
    kinds = pool["excluded"].str.split(":").str[0]
    excluded = kinds[kinds != ""].value_counts().sort_index()
    return {"n": len(pool), "usable": int((kinds == "").sum()), "excluded": {k: int(v) for k, v in excluded.items()}}


def carved_check(published: pd.Series, images: pd.DataFrame) -> list[Check]:
    """A warning that says so when the val split was carved from the manifest's train rows (else none).

    Args:
        published: The manifest's split column as read (before `assign_splits`).
        images: The image table with the splits assigned.

    Returns:
        One warning check naming how many train images of how many patients became val, or [].
    """
    carved = images[(published.reindex(images.index) == "train") & (images["split"] == "val")]
    if carved.empty:
        return []
    return [
        Check(
            "val split carved from train",
            False,
            [
                f"the manifest has no val rows: {len(carved)} of its train images ({carved['patient_id'].nunique()} "
                "patients, whole patients and copies together, stratified by label, seeded by preprocess.seed) "
                "are the validation split"
            ],
            severity="warning",
        )
    ]


def color_check(images: pd.DataFrame, preprocessing: PreprocessParams) -> list[Check]:
    """A warning when gray training would throw the colour of most images away (else none).

    Args:
        images: The image table (its scan `chroma` column).
        preprocessing: The preprocess params (color, resolved).

    Returns:
        One warning check with the share of images that carry colour, or [].
    """
    from pipeline.autoparams import COLOR_SHARE

    readable = images[images["readable"]]
    colored = int((readable["chroma"] > CHROMA_MIN).sum())
    if preprocessing.color != "gray" or not len(readable) or colored < COLOR_SHARE * len(readable):
        return []
    return [
        Check(
            "colour kept",
            False,
            [
                f"{colored} of {len(readable)} images carry colour but preprocess.color is gray, so training sees "
                "them in gray: set preprocess.color: auto (or rgb) to keep it"
            ],
            severity="warning",
        )
    ]


def derived_tables(images: pd.DataFrame, labels: list[str], empty_folders: list[str]) -> dict[str, pd.DataFrame]:
    """Per patient, per image hash, per (split, hash) and per class views of the image table.

    Args:
        images: The image table with splits assigned.
        labels: The known classes (validate.labels), in order.
        empty_folders: Classes whose folder holds no image (marked in the class table).

    Returns:
        Frames by name: patients, hashes, within, near, classes and balance (largest / smallest class ratio).
    """
    readable = images[images["readable"]]
    counts = images["label"].value_counts()
    classes = pd.DataFrame({"label": labels, "count": [int(counts.get(lb, 0)) for lb in labels]})
    classes["label"] = [f"{lb} (empty class folder)" if lb in empty_folders else lb for lb in classes["label"]]
    present = classes["count"][classes["count"] > 0]
    ratio = float(present.max() / present.min()) if len(present) else 1.0
    return {
        "patients": images.groupby("patient_id").agg(n_splits=("split", "nunique")).reset_index(),
        "hashes": readable.groupby("sha256")
        .agg(n_splits=("split", "nunique"), path=("path", " = ".join))
        .reset_index(),
        "within": readable.groupby(["split", "sha256"])
        .agg(copies=("path", "size"), paths=("path", " = ".join))
        .reset_index(),
        "near": near_table(images),
        "classes": classes,
        "balance": pd.DataFrame({"what": ["largest / smallest class"], "ratio": [ratio]}),
    }


def near_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per near-duplicate group: how many splits and labels it spans, and its paths.

    Args:
        images: The image table; `near_group` (-1: none) marks the groups, a missing column means none.

    Returns:
        Columns near_group, n_splits, n_labels and paths (joined by " ~ "); empty but typed when no group.
    """
    members = images[images.get("near_group", pd.Series(-1, index=images.index)) >= 0]
    if members.empty:
        return pd.DataFrame(
            {
                "near_group": pd.Series([], dtype="int64"),
                "n_splits": pd.Series([], dtype="int64"),
                "n_labels": pd.Series([], dtype="int64"),
                "paths": pd.Series([], dtype=str),
            }
        )
    return (
        members.groupby("near_group")
        .agg(n_splits=("split", "nunique"), n_labels=("label", "nunique"), paths=("path", " ~ ".join))
        .reset_index()
    )


DROPPED_CSV = "duplicates_dropped.csv"  # in outputs/validate: what drop_leaks removed
DROPPED_COLUMNS = ["path", "label", "split", "kind", "kept"]
SPLIT_RANK = {s: i for i, s in enumerate(SPLITS)}


def drop_leaks(images: pd.DataFrame, validation: ValidateParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove the val/test members of groups that cross splits (train kept; else the earliest split kept),
    for exact copies when `exact_duplicates: drop` and near copies when `near_duplicates.action: drop`.

    Args:
        images: the image table with `split`, `sha256`, `readable` and `near_group` (-1: none).
        validation: the validate params.

    Returns:
        The kept images, and the dropped ones (path, label, split, kind, kept: a kept member's path).
    """
    rank = images["split"].map(SPLIT_RANK).fillna(len(SPLITS))
    drop = pd.Series(False, index=images.index)
    records = []
    keys = []
    if validation.exact_duplicates == "drop":
        keys.append(("exact", images["sha256"].where(images["readable"] & (images["sha256"] != ""))))
    if validation.near_duplicates.enabled and validation.near_duplicates.action == "drop":
        keys.append(("near", images["near_group"].where(images["near_group"] >= 0)))
    for kind, key in keys:
        valid = key.notna() & ~drop
        best = rank[valid].groupby(key[valid]).transform("min")
        gone = valid & (rank > best.reindex(images.index, fill_value=len(SPLITS)))
        kept = images[valid & ~gone].groupby(key[valid & ~gone])["path"].first()
        for i in images.index[gone]:
            records.append(
                {
                    "path": images.at[i, "path"],
                    "label": images.at[i, "label"],
                    "split": images.at[i, "split"],
                    "kind": kind,
                    "kept": kept.get(key[i], ""),
                }
            )
        drop |= gone
    dropped = pd.DataFrame(records, columns=["path", "label", "split", "kind", "kept"])
    return images[~drop].reset_index(drop=True), dropped


class CleanSearch(NamedTuple):
    """One search at `validate.near_duplicates.clean`: per row, whether a train image lies within it; per row
    with a fingerprint, the distance to its nearest other image, capped at `radius` + 1 (the histogram)."""

    near_train: "np.ndarray"
    nearest: "np.ndarray"
    radius: int  # the farthest distance searched: `clean`, or `clean_small` when there are small images


def near_train(images: pd.DataFrame, near: NearDuplicateParams) -> CleanSearch:
    """Which images have another image in train within the clean threshold (the test images evaluation leaves
    out of its `test_clean_*` metrics), and each image's nearest distance, from one search.

    Args:
        images: The image table with `split`, `fingerprint`, `width`, `height` and (for windows) `windows`.
        near: The near-duplicate params: `clean` (and `clean_small` for a pair with an image under 32 px a
            side) make a near copy here; `windows` compares crops and shifts too.

    Returns:
        The flags per row (False for rows without a fingerprint), the nearest distances and the radius.
    """
    import numpy as np

    rows, hashes, wins = parse(images["fingerprint"], images["windows"] if near.windows else None)
    split = images["split"].to_numpy()[rows]
    small = small_images(images["width"], images["height"])[rows]
    i, j, d = near_pairs(hashes, near.clean, wins, small, near.clean_small)
    flags = np.zeros(len(images), dtype=bool)
    flags[rows[np.concatenate([i[split[j] == "train"], j[split[i] == "train"]])]] = True  # either end the train one
    radius = near.clean_small if small.any() else near.clean
    nearest = np.full(len(rows), radius + 1, dtype=np.int64)  # the histogram's last bin: beyond the search
    np.minimum.at(nearest, i, np.minimum(d, radius + 1))
    np.minimum.at(nearest, j, np.minimum(d, radius + 1))
    return CleanSearch(flags, nearest, radius)


def near_duplicate_summary(
    images: pd.DataFrame,
    validation: ValidateParams,
    dropped: pd.DataFrame,
    nearest: "np.ndarray",
    radius: int,
    max_groups: int = 50,
) -> dict:
    """What the report shows: groups across splits (members with distance to the first), counts per split
    pair, label conflicts, a histogram of nearest-neighbour distances, and what was dropped.

    Args:
        images: The image table with `split`, `fingerprint`, `windows` and `near_group`.
        validation: The validate params (its near_duplicates section).
        dropped: What drop_leaks removed.
        nearest: Each fingerprinted image's nearest distance, capped (near_train's search at the clean threshold).
        radius: The farthest distance that search looked (near_train's `radius`).
        max_groups: At most this many cross-split groups are listed.

    Returns:
        The dict stored as `near_duplicates` in report.json.
    """
    near = validation.near_duplicates
    table = near_table(images)
    crossing = table[table["n_splits"] > 1]
    nn: np.ndarray | list[int] = nearest if len(nearest) > 1 else []
    pairs: dict[str, int] = {}
    groups: list[list[dict[str, Any]]] = []
    members = images[images["near_group"].isin(crossing["near_group"])].groupby("near_group", sort=False)
    for gid in crossing["near_group"]:
        rows = members.get_group(gid)  # one pass over the images, not one per group
        splits = sorted(set(rows["split"]), key=lambda s: SPLIT_RANK.get(s, 9))
        for a in range(len(splits)):
            for b in range(a + 1, len(splits)):
                name = f"{splits[a]}-{splits[b]}"
                pairs[name] = pairs.get(name, 0) + 1
        if len(groups) < max_groups:
            _, words, rwins = parse(rows["fingerprint"], rows["windows"] if near.windows else None)
            dist = hamming(words, words[:1]) if rwins is None else combined_distance(words, rwins, words[:1], rwins[:1])
            groups.append(
                [
                    {"path": p, "label": lb, "split": sp, "distance": int(d)}
                    for p, lb, sp, d in zip(rows["path"], rows["label"], rows["split"], dist)
                ]
            )
    hist = [int(c) for c in pd.Series(nn, dtype="int64").value_counts().reindex(range(radius + 2), fill_value=0)]
    return {
        "enabled": near.enabled,
        "threshold": near.threshold,
        "small_threshold": near.small,
        "n_small": int(small_images(images["width"], images["height"]).sum()),
        "windows": near.windows,
        "action": near.action,
        "n_groups": int(len(table)),
        "n_images_in_groups": int((images["near_group"] >= 0).sum()),
        "n_cross_split": int(len(crossing)),
        "split_pairs": pairs,
        "label_conflicts": int((table["n_labels"] > 1).sum()),
        "cross_split_groups": groups,
        "nn_histogram": hist,
        "nn_radius": radius,
        "dropped": dropped.to_dict("records"),
        "n_dropped": int(len(dropped)),
    }


def _expectations(validation: ValidateParams) -> dict[str, tuple[str, str, list]]:
    """Suites as (frame, column shown for offenders, expectations); warnings live in their own suites."""
    import great_expectations.expectations as gxe

    def in_set(column, values, text):
        return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=values, description=text)

    return {
        "images": (
            "images",
            "reason",
            [
                gxe.ExpectColumnValuesToBeUnique(column="path", description="path listed once"),
                gxe.ExpectColumnValuesToNotBeNull(column="label", description="label given"),
                in_set("label", validation.classes, "label known"),
                in_set("inside_root", [True], "path inside the data root"),
                in_set("exists", [True], "file exists"),
                in_set("readable", [True], "image readable"),
                in_set("split", list(SPLITS), "split is train, val or test"),
            ]
            + ([in_set("not_blank", [True], "not blank")] if validation.blank == "error" else []),
        ),
        "patients": ("patients", "patient_id", [in_set("n_splits", [1], "each patient in one split")]),
        "hashes": ("hashes", "path", [in_set("n_splits", [1], "each image (sha256) in one split")]),
        "classes": (
            "classes",
            "label",
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="count",
                    min_value=validation.min_per_class,
                    description=f"at least {validation.min_per_class} images per class",
                )
            ],
        ),
        "image_warnings": (
            "images",
            "path",
            [in_set("sharp", [True], "not blurry (warning)")]
            + ([in_set("not_blank", [True], "not blank (warning)")] if validation.blank == "warning" else []),
        ),
        "split_warnings": (
            "within",
            "paths",
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="copies", max_value=1, description="no duplicate images within a split (warning)"
                )
            ],
        ),
        **_near_suites(validation),
        "balance_warnings": (
            "balance",
            "what",
            [
                gxe.ExpectColumnValuesToBeBetween(
                    column="ratio",
                    max_value=validation.max_imbalance,
                    description=f"class imbalance at most {validation.max_imbalance:g}:1 (warning)",
                )
            ],
        ),
    }


def _near_suites(validation: ValidateParams) -> dict[str, tuple[str, str, list]]:
    """Near-duplicate groups in one split (error, or warning with `action: warning`); one label per group."""
    import great_expectations.expectations as gxe

    near = validation.near_duplicates
    if not near.enabled:
        return {}
    one_split = gxe.ExpectColumnValuesToBeInSet(
        column="n_splits",
        value_set=[1],
        description=f"each near-duplicate group (distance <= {near.threshold}) in "
        f"one split{' (warning)' if near.action == 'warning' else ''}",
    )
    one_label = gxe.ExpectColumnValuesToBeInSet(
        column="n_labels",
        value_set=[1],
        description="one label per near-duplicate group (else probable label errors, warning)",
    )
    name = "near_warnings" if near.action == "warning" else "near"
    return {name: ("near", "paths", [one_split]), "near_label_warnings": ("near", "paths", [one_label])}


def _offenders(result: dict, frame: pd.DataFrame, key: str) -> list[str]:
    """Up to five offending rows as `key`, with the tested column's value when it adds something."""
    column = result["expectation_config"]["kwargs"].get("column", key)
    rows = result["result"].get("partial_unexpected_index_list") or []
    show = column in ("label", "split", "count", "ratio", "n_splits", "copies", "n_labels")

    def value(i: int) -> object:
        v = frame.loc[i, column]
        return v.item() if hasattr(v, "item") else v

    return [f"{frame.loc[i, key]}" + (f" ({column}={value(i)!r})" if show else "") for i in rows[:5]]


def run_suites(frames: dict[str, pd.DataFrame], suites: dict[str, tuple[str, str, list]]) -> list[Check]:
    """Run each suite on its frame with a GX Checkpoint; return one Check per expectation.

    Args:
        frames: The frames by name (the image table and derived_tables' views).
        suites: By suite name: (frame name, column shown for offenders, expectations); names ending in
            `_warnings` give warnings.

    Returns:
        One Check per expectation, with up to five offenders each.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas("medpipe")
    checks = []
    for name, (frame_name, key, expectations) in suites.items():
        frame = frames[frame_name].reset_index(drop=True)
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        vdef = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(name=name, validation_definitions=[vdef], result_format={"result_format": "COMPLETE"})
        )
        for vres in checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values():
            for r in vres.to_json_dict()["results"]:
                severity = "warning" if name.endswith("_warnings") else "error"
                checks.append(
                    Check(r["expectation_config"]["description"], r["success"], _offenders(r, frame, key), severity)
                )
    return checks


def validate_data(
    root: Path, params: Params, out: Path, project: Path, mapper: Mapper | None = None, cache: Path | None = None
) -> tuple[ValidationReport, pd.DataFrame, pd.DataFrame]:
    """Validate the data set under `root` (the scan through `mapper` if given); return the report, the
    image table with splits and the unlabelled pool's table.

    Args:
        root: The data root (manifest.csv or a folder per class).
        params: The run's params.
        out: The validate output folder.
        project: The project root.
        mapper: Maps the scan over chunks (None: in this process).
        cache: The scan cache CSV (None: cache/scan.csv beside `out`).

    Returns:
        The report, the image table with splits assigned and leaks dropped, and the unlabelled images'
        table (image_table's columns and `excluded`: pool_exclusions).

    Raises:
        DataError: The data set cannot be read (from discover).
    """
    manifest, empty_folders, unlabelled = discover(root)
    manifest = with_subgroups(manifest, root, params.evaluate.subgroups)
    validation = params.validate_
    pool_rows = unlabelled.reindex(columns=manifest.columns, fill_value="")
    table = image_table(  # one scan of both: the scan cache keeps the files of its last call only
        pd.concat([manifest, pool_rows], ignore_index=True) if len(pool_rows) else manifest,
        root,
        cache or out.parent / "cache" / "scan.csv",
        validation,
        project,
        mapper,
        params.dask.chunk_size,
        params.preprocess,
    )
    images, pool = table.iloc[: len(manifest)].copy(), table.iloc[len(manifest) :].reset_index(drop=True)
    near = validation.near_duplicates
    windows = images["windows"].tolist() if near.windows else None
    small = small_images(images["width"], images["height"])
    groups = (
        find_groups(images["fingerprint"].tolist(), near.threshold, windows, small, near.small)
        if near.enabled
        else None
    )
    images["near_group"] = groups.group if groups is not None else -1
    published = images["split"].copy()
    images["split"] = assign_splits(images, params).fillna("")
    images, dropped = drop_leaks(images, validation)
    clean = near_train(images, near)
    images["near_train"] = clean.near_train
    frames = {"images": images, **derived_tables(images, validation.classes, empty_folders)}
    checks = (
        run_suites(frames, _expectations(validation))
        + carved_check(published, images)
        + color_check(images, params.preprocess)
    )
    pool["excluded"] = pool_exclusions(pool, images, near)
    counts = images["label"].value_counts().to_dict()
    report = ValidationReport(
        all(c.success for c in checks if c.severity == "error"),
        checks,
        len(images),
        {lb: int(counts.get(lb, 0)) for lb in validation.classes},
        near_duplicates=near_duplicate_summary(images, validation, dropped, clean.nearest, clean.radius)
        if near.enabled
        else {"enabled": False, "dropped": dropped.to_dict("records"), "n_dropped": len(dropped)},
        color=params.preprocess.color,
        n_unlabelled=len(unlabelled),
        pool=pool_summary(pool) if len(pool) else {},
    )
    return report, images, pool


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}.ok{color:#1a7f37}"
    ".error{color:#cf222e;font-weight:bold}.warning{color:#9a6700;font-weight:bold}"
)


def _unlabelled_note(n: int, pool: dict | None = None) -> str:
    """The reports' line on the unlabelled pool."""
    usable = ""
    if pool:
        excluded = ", ".join(f"{v} {k}" for k, v in pool["excluded"].items())
        usable = (
            f" {pool['usable']} usable by `semi` training"
            + (f" ({excluded} excluded; {POOL_CSV})" if excluded else "")
            + ";"
        )
    return (
        f"Unlabelled: {n} image(s), in no split (not evaluated on);{usable} rank them for review with "
        "`medpipe label suggest`, merge the labels with `medpipe label import`."
    )


def _status(check: Check) -> str:
    return "ok" if check.success else check.severity


def _thumbnail(root: Path, rel: str, side: int = 128) -> str:
    """A data URI of a small PNG of the image (an empty string when it cannot be read)."""
    import base64

    import cv2
    import numpy as np

    from pipeline.errors import ImageError
    from pipeline.imageio import read_image, to_gray

    try:
        gray = to_gray(read_image(root / rel).pixels)
    except ImageError:
        return ""
    h, w = gray.shape
    scale = side / max(h, w)
    small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8))
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode() if ok else ""


def _histogram_uri(hist: list[int], threshold: int, small: int | None = None) -> str:
    """The nearest-neighbour distance histogram as an embedded PNG (matplotlib, no display), with the threshold
    and, when the data set has images under 32 px a side, the small-image threshold."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=90)
    ax.bar(range(len(hist)), hist, color="#4472c4", width=0.9)
    ax.axvline(threshold + 0.5, color="#cf222e", linestyle="--", label=f"threshold {threshold}")
    if small is not None and small > threshold:
        ax.axvline(small + 0.5, color="#d4a017", linestyle=":", label=f"images < 32 px: {small}")
    ax.set_xlabel(f"distance to the nearest other image (bits of 256; last bar: > {len(hist) - 2})")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _small_note(near: dict) -> str:
    """The report's words for the small-image threshold, when the data set has images under 32 px a side."""
    n = near.get("n_small", 0)
    return f"; &le; {near['small_threshold']} for a pair with one of the {n} image(s) under 32 px a side" if n else ""


def _small_line(near: dict) -> int | None:
    """The small-image threshold to draw, when the data set has images under 32 px a side and it differs."""
    small = near.get("small_threshold")
    return small if near.get("n_small") and small is not None and small > near["threshold"] else None


def _near_html(near: dict, root: Path | None) -> str:
    """The near-duplicate section: counts, the histogram, and each cross-split group side by side."""
    from html import escape

    if not near.get("enabled"):
        return ""
    parts = [
        f"<h2>Near-duplicate images</h2><p>{near['n_groups']} group(s) of near copies (distance &le; "
        f"{near['threshold']} of 256 bits{_small_note(near)}"
        f"{', crops and shifts included' if near.get('windows') else ''}), "
        f"{near['n_cross_split']} across splits (action: "
        f"{escape(near['action'])}); {near['label_conflicts']} group(s) with conflicting labels; "
        f"{near['n_dropped']} image(s) dropped.</p>"
    ]
    if near["split_pairs"]:
        parts.append(
            "<table><tr><th>splits</th><th>groups</th></tr>"
            + "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in sorted(near["split_pairs"].items()))
            + "</table>"
        )
    if sum(near["nn_histogram"]):
        parts.append(
            "<p><img alt='nearest-neighbour distances' "
            f"src='{_histogram_uri(near['nn_histogram'], near['threshold'], _small_line(near))}'>"
            "</p><p>Near copies sit left of the threshold; distinct images to its right"
            f"{' (for a pair with an image under 32 px a side, left of the dotted line)' if _small_line(near) else ''}"
            ".</p>"
        )
    for group in near["cross_split_groups"]:
        cells = "".join(
            "<figure style='display:inline-block;margin:.4em;vertical-align:top'>"
            + (f"<img src='{_thumbnail(root, m['path'])}' alt=''>" if root is not None else "")
            + f"<figcaption>{escape(m['path'])}<br>{escape(m['label'])} · {escape(m['split'])} · distance "
            f"{m['distance']}</figcaption></figure>"
            for m in group
        )
        parts.append(f"<div style='border:1px solid #ccc;margin:.5em 0'>{cells}</div>")
    if near["dropped"]:
        parts.append(
            "<h3>Dropped</h3><table><tr><th>path</th><th>label</th><th>split</th><th>kind</th>"
            "<th>near copy kept</th></tr>"
            + "".join(
                f"<tr><td>{escape(d['path'])}</td><td>{escape(d['label'])}</td><td>{escape(d['split'])}</td>"
                f"<td>{escape(d['kind'])}</td><td>{escape(d['kept'])}</td></tr>"
                for d in near["dropped"]
            )
            + "</table>"
        )
    return "".join(parts)


def counts_text(counts: dict[str, int]) -> str:
    """Counts for people: `normal 409, nodule 133` (no Python dict).

    Args:
        counts: Name to count, in the order shown.

    Returns:
        The comma-separated pairs (`none` when empty).
    """
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"


def write_report(report: ValidationReport, out: Path, final: Path | None = None, data_root: Path | None = None) -> Path:
    """Write report.json, report.md and a self-contained report.html into `out`.

    Args:
        report: what validation found.
        out: the folder written (a temporary one that becomes `final`, when given).
        final: where the reports will live (named in the report).
        data_root: the images, for the thumbnails of near-duplicate groups (None: no thumbnails).

    Returns:
        The Markdown path.
    """
    from html import escape

    md = out / "report.md"
    report.report_md = str((final or out) / "report.md")
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    title = f"Data validation: {'PASSED' if report.success else 'FAILED'}"
    lines = [
        f"# {title}",
        "",
        report.summary(),
        "",
        f"Class counts: {counts_text(report.class_counts)}",
        "",
        *([f"Colour: {report.color}", ""] if report.color else []),
        *([_unlabelled_note(report.n_unlabelled, report.pool), ""] if report.n_unlabelled else []),
        "| check | result | examples |",
        "|---|---|---|",
    ]
    lines += [f"| {c.name} | {_status(c)} | {'; '.join(c.unexpected)} |" for c in report.checks]
    near = report.near_duplicates
    if near.get("enabled"):
        lines += [
            "",
            f"Near duplicates (distance <= {near['threshold']}): {near['n_groups']} group(s), "
            f"{near['n_cross_split']} across splits {near['split_pairs']}, {near['label_conflicts']} with "
            f"conflicting labels.",
        ]
    if near.get("n_dropped"):
        lines += ["", f"Dropped {near['n_dropped']} image(s) ({DROPPED_CSV}):", ""]
        lines += [f"- {d['path']} ({d['split']}, {d['kind']} copy of {d['kept']})" for d in near["dropped"]]
    md.write_text("\n".join(lines) + "\n")
    rows = "".join(
        f"<tr><td>{escape(c.name)}</td><td class='{_status(c)}'>{_status(c)}</td>"
        f"<td>{'<br>'.join(escape(u) for u in c.unexpected)}</td></tr>"
        for c in report.checks
    )
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
        f"<body><h1>{title}</h1><p>{escape(report.summary())}</p><p>Class counts: "
        f"{escape(counts_text(report.class_counts))}</p>"
        f"{f'<p>{escape(_unlabelled_note(report.n_unlabelled, report.pool))}</p>' if report.n_unlabelled else ''}"
        "<table><tr><th>check</th><th>result</th><th>examples</th></tr>"
        f"{rows}</table>{_near_html(near, data_root)}</body></html>\n"
    )
    return md


def run_step(params: Params, ws: Workspace, out: Path | None = None, mapper: Mapper | None = None) -> ValidationReport:
    """Validate the workspace's data; write reports and the split table under outputs/validate/.
    The image scan runs through `mapper` when one is given (a Dask cluster: flows/data.py).

    Args:
        params: The run's params.
        ws: The workspace (data root, outputs).
        out: The folder written (None: outputs/validate).
        mapper: Maps the scan over chunks (None: in this process).

    Returns:
        The report; an unreadable data set gives a failed report with one check, not an exception.
    """
    final = out or ws.out / "validate"
    with replace_dir(final) as tmp:  # a crash leaves the previous reports and split, never half of them
        try:
            # one scan cache per workspace, wherever the reports go: `medpipe validate DIR` (reports under
            # outputs/reports/) leaves the cache `medpipe run --data DIR` reads, so the run does not rescan
            cache = ws.out / "cache" / "scan.csv"
            report, images, pool = validate_data(ws.data_root, params, final, ws.base, mapper, cache)
        except DataError as err:
            report, images = ValidationReport(False, [Check("data set readable", False, [str(err)])], 0, {}), None
            pool = pd.DataFrame(columns=POOL_COLUMNS)
        faults.point("validate.scan")
        if images is not None:
            columns = ["path", "label", "patient_id", "split", "sha256", "fingerprint", "near_train"]
            columns += [c for c in images.columns if c.startswith(SUBGROUP_PREFIX)]
            images[columns].to_csv(tmp / "splits.csv", index=False, lineterminator="\n")
            if len(pool):
                pool[POOL_COLUMNS].to_csv(tmp / POOL_CSV, index=False, lineterminator="\n")
            if report.near_duplicates.get("n_dropped"):
                pd.DataFrame(report.near_duplicates["dropped"], columns=DROPPED_COLUMNS).to_csv(
                    tmp / DROPPED_CSV, index=False, lineterminator="\n"
                )
        write_report(report, tmp, final, ws.data_root)
    return report


def load_result(ws: Workspace) -> ValidationReport:
    """Read back the report the validate step wrote (for a step run on its own, e.g. by DVC).

    Args:
        ws: The workspace (reads outputs/validate/report.json).

    Returns:
        The report, as run_step returned it.

    Raises:
        MedpipeError: The data have not been validated in this workspace.
    """
    return read_result(
        ws.out / "validate" / "report.json",
        "validate",
        lambda raw: ValidationReport(**{**raw, "checks": [Check(**c) for c in raw["checks"]]}),
    )
