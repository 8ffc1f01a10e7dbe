"""Data sets: the built-in synthetic chest radiographs and reading a manifest.

The generator uses only IEEE-exact arithmetic (+, -, *, /, clip) on float64 and numpy's seeded
PCG64 streams, so the same seed gives byte-identical PNGs on any x86-64 machine and the hash
in `data.dvc` stays stable.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError

CLASSES = ("normal", "nodule", "effusion")
CLASS_SHARES = (0.7, 0.2, 0.1)
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "patient_id")
UNLABELLED = "unlabelled"  # the folder beside the class folders for images without a label (not a class)
PROVENANCE_COLUMNS = ("label_source", "reviewed_by", "reviewed_at")  # where each label came from (label import)


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest: body and lung geometry in unit coordinates, plus tissue levels."""

    cx: float
    cy: float
    gap: float
    lung_a: float
    lung_b: float
    body: float
    air: float
    rib_phase: float


@dataclass(frozen=True)
class Lesion:
    """A finding: a nodule (disk) or an effusion (fluid level in the lower lung)."""

    kind: str
    side: int  # -1 right lung (image left), +1 left lung
    x: float
    y: float
    size: float
    contrast: float


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return xx / (size - 1), yy / (size - 1)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Soft-edged ellipse mask in [0, 1]."""
    d = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2
    return _smoothstep((1.0 - d) / 0.15)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture: a coarse normal grid, bilinearly upsampled."""
    coarse = rng.normal(size=(cells + 1, cells + 1))
    u = np.arange(size, dtype=np.float64) * cells / (size - 1)
    i = np.minimum(u.astype(np.int64), cells - 1)
    f = u - i
    rows = coarse[i] * (1.0 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1.0 - f)[None, :] + rows[:, i + 1] * f[None, :]


TISSUE = 0.12  # contrast of an image's soft-tissue texture (outside the lungs, where findings are not)


def soft_tissue(seed: int, patient: int, image: int, size: int) -> np.ndarray:
    """An image's soft-tissue texture, from a stream of its own (the main stream's draws stay as they were).

    Without it, two patients' images differ only by position and size (one template), which makes them
    shifted near-copies of each other (pipeline.near_duplicates); per image, not per patient, so that a
    model cannot tell patients apart by it.

    Args:
        seed: The data set's seed.
        patient: The patient's number.
        image: The image's number within the patient.
        size: Side of the square image in pixels.

    Returns:
        (size, size) float64 texture, about unit variance.
    """
    return _smooth_noise(np.random.default_rng([seed, patient, image, 1]), size, 10)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's chest geometry and tissue brightness.

    Args:
        rng: The seeded generator (draws advance it).

    Returns:
        The patient's anatomy.
    """
    return Anatomy(
        cx=0.5 + rng.uniform(-0.04, 0.04),
        cy=0.47 + rng.uniform(-0.04, 0.04),
        gap=rng.uniform(0.17, 0.22),
        lung_a=rng.uniform(0.13, 0.17),
        lung_b=rng.uniform(0.26, 0.33),
        body=rng.uniform(0.5, 0.65),
        air=rng.uniform(0.25, 0.35),
        rib_phase=rng.uniform(0.0, 1.0),
    )


def sample_lesion(rng: np.random.Generator, kind: str, anatomy: Anatomy) -> Lesion | None:
    """Draw a finding of `kind` placed inside one lung (None for `normal`).

    Args:
        rng: The seeded generator (nothing is drawn for `normal`).
        kind: `normal`, `nodule` or `effusion`.
        anatomy: The patient's chest, which places the finding.

    Returns:
        The lesion, or None for `normal`.
    """
    if kind == "normal":
        return None
    side = 1 if rng.uniform() < 0.5 else -1
    x = anatomy.cx + side * anatomy.gap + rng.uniform(-0.5, 0.5) * anatomy.lung_a
    if kind == "nodule":
        y = anatomy.cy + rng.uniform(-0.55, 0.55) * anatomy.lung_b
        return Lesion(kind, side, x, y, rng.uniform(0.04, 0.08), rng.uniform(0.18, 0.35))
    level = anatomy.cy + rng.uniform(0.05, 0.45) * anatomy.lung_b
    return Lesion(kind, side, x, level, anatomy.lung_a, rng.uniform(0.15, 0.3))


def lesion_mask(lesion: Lesion, anatomy: Anatomy, size: int) -> np.ndarray:
    """Where the finding is, as a soft mask in [0, 1] (empty for no lesion).

    Args:
        lesion: The finding (None: no lesion).
        anatomy: The patient's chest (an effusion fills its lung).
        size: Side of the square image in pixels.

    Returns:
        (size, size) float64 mask.
    """
    xx, yy = _grid(size)
    if lesion is None:
        return np.zeros((size, size))
    if lesion.kind == "nodule":
        return _ellipse(xx, yy, lesion.x, lesion.y, lesion.size, lesion.size)
    lung_x = anatomy.cx + lesion.side * anatomy.gap
    lung = _ellipse(xx, yy, lung_x, anatomy.cy, anatomy.lung_a, anatomy.lung_b)
    meniscus = lesion.y - 0.06 * ((xx - lung_x) / lesion.size) ** 2  # fluid climbs the chest wall
    return lung * _smoothstep((yy - meniscus) / 0.03)


def render(
    anatomy: Anatomy, lesion: Lesion | None, size: int, rng: np.random.Generator, tissue: np.ndarray | None = None
) -> np.ndarray:
    """Render one radiograph as uint8: body, dark lungs, spine, ribs, texture, noise, finding.

    Args:
        anatomy: The patient's chest.
        lesion: The finding, or None.
        size: Side of the square image in pixels.
        rng: The seeded generator for texture, exposure and noise.
        tissue: The image's soft-tissue texture, (size, size) (soft_tissue), or None.

    Returns:
        (size, size) uint8 image.
    """
    xx, yy = _grid(size)
    a = anatomy
    img = 0.06 + a.body * _ellipse(xx, yy, a.cx, a.cy + 0.06, 0.46, 0.52)
    lungs = np.maximum(
        _ellipse(xx, yy, a.cx - a.gap, a.cy, a.lung_a, a.lung_b),
        _ellipse(xx, yy, a.cx + a.gap, a.cy, a.lung_a, a.lung_b),
    )
    img = img - a.air * lungs + 0.15 * _ellipse(xx, yy, a.cx, a.cy + 0.05, 0.06, 0.5)
    ribs = np.abs(np.mod(yy - 0.35 * (xx - a.cx) ** 2 + a.rib_phase * 0.09, 0.09) - 0.045) < 0.012
    img = img + 0.06 * ribs * lungs + 0.05 * _smooth_noise(rng, size, 6) * lungs
    if tissue is not None:  # what tells two images apart beyond their position (pipeline.near_duplicates)
        img = img + TISSUE * tissue * np.clip(_ellipse(xx, yy, a.cx, a.cy + 0.06, 0.46, 0.52) - lungs, 0, 1)
    if lesion is not None:
        img = img + lesion.contrast * lesion_mask(lesion, a, size)
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0.0, 0.03, size=(size, size))
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _patient_labels(n_patients: int, rng: np.random.Generator) -> list[str]:
    counts = [round(n_patients * share) for share in CLASS_SHARES[1:]]
    labels = [CLASSES[0]] * (n_patients - sum(counts))
    for label, count in zip(CLASSES[1:], counts):
        labels += [label] * count
    return [labels[i] for i in rng.permutation(n_patients)]


def synthesize(out: Path, n_patients: int = 200, size: int = 64, seed: int = 0) -> pd.DataFrame:
    """Write the built-in data set (PNGs + manifest.csv) under `out`; return the manifest.

    Each patient has 2-4 images sharing anatomy and finding; labels are imbalanced ~70/20/10.

    Args:
        out: The folder to write into (created as needed).
        n_patients: How many patients.
        size: Side of each square image in pixels.
        seed: Seed of the generator: the same seed gives the same bytes.

    Returns:
        The manifest (path, label, patient_id); `attrs["findings"]` holds (anatomy, lesion) per path.
    """
    rng = np.random.default_rng(seed)
    rows, findings = [], {}
    for p, label in enumerate(_patient_labels(n_patients, rng)):
        anatomy = sample_anatomy(rng)
        lesion = sample_lesion(rng, label, anatomy)
        for k in range(int(rng.integers(2, 5))):
            rel = Path("images") / label / f"P{p:04d}_{k}.png"
            (out / rel.parent).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / rel), render(anatomy, lesion, size, rng, soft_tissue(seed, p, k, size)))
            rows.append((rel.as_posix(), label, f"P{p:04d}"))
            findings[rel.as_posix()] = (anatomy, lesion)
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest.to_csv(out / MANIFEST, index=False, lineterminator="\n")
    manifest.attrs["findings"] = findings  # ground truth (anatomy, lesion) per image, for lesion_mask()
    return manifest


def read_table(path: Path, expected: str) -> pd.DataFrame:
    """Read a CSV of the user's (a manifest, a reviewed label queue) as strings, every column.

    Args:
        path: The CSV file.
        expected: Its columns as the error shows them, e.g. `path,label[,patient_id]`; `path` and `label`
            are required.

    Returns:
        The rows as strings (empty cells empty, not NaN).

    Raises:
        DataError: the file is not a readable CSV or lacks `path` or `label`.
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(path, f"not a readable CSV ({err.__class__.__name__})") from None
    missing = [c for c in ("path", "label") if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; expected {expected}")
    return df


def read_manifest(root: Path) -> pd.DataFrame:
    """Read `root/manifest.csv`: path, label[, patient_id][, split] (empty patient_id/split allowed; an empty
    label is an unlabelled image).

    Args:
        root: The data root holding manifest.csv.

    Returns:
        The manifest as strings, columns path, label, patient_id, split (missing optional ones empty), every row.

    Raises:
        DataError: the manifest is missing, not a readable CSV, or lacks `path` or `label`.
    """
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(path, "manifest not found (run `medpipe data synth --out DIR` for the built-in set)")
    df = read_table(path, "path,label[,patient_id][,split]")
    for column in ("patient_id", "split"):
        if column not in df.columns:
            df[column] = ""
    return df[[*MANIFEST_COLUMNS, "split"]]


SUBGROUP_PREFIX = "subgroup_"  # a manifest column named by evaluate.subgroups, as the split table carries it
MAX_SUBGROUPS = 20  # distinct values a subgroup column may have (bin a number first, e.g. age -> age_band)


def with_subgroups(manifest: pd.DataFrame, root: Path, names: list[str]) -> pd.DataFrame:
    """The manifest with each manifest.csv column named by `evaluate.subgroups` as `subgroup_<name>`.

    Args:
        manifest: The discovered manifest (from read_manifest: same rows, same order).
        root: The data root.
        names: The columns (e.g. `sex`, `site`); empty values become `unknown`.

    Returns:
        The manifest, with one more column per name.

    Raises:
        DataError: The data have no manifest.csv, it lacks a named column, or a column has too many values.
    """
    if not names:
        return manifest
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(
            root,
            f"evaluate.subgroups names {', '.join(names)}, but class folders carry no columns: "
            "a manifest.csv can (path,label,...,<column>)",
        )
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw = raw[raw["label"] != ""] if "label" in raw.columns else raw  # the labelled rows, as discover keeps them
    missing = [n for n in names if n not in raw.columns]
    if missing:
        raise DataError(
            path, f"no column {', '.join(missing)} (named by evaluate.subgroups); it has {', '.join(raw.columns)}"
        )
    for name in names:
        levels = raw[name].nunique()
        if levels > MAX_SUBGROUPS:
            raise DataError(
                path,
                f"column {name} has {levels} distinct values; a subgroup column may have at "
                f"most {MAX_SUBGROUPS} (bin it first, e.g. age -> age_band)",
            )
    return manifest.assign(**{SUBGROUP_PREFIX + n: raw[n].replace("", "unknown").to_numpy() for n in names})


class Discovery(NamedTuple):
    """A data set's labelled images (path, label, patient_id, split), its class folders without images, and its
    unlabelled images (same columns, empty label: rows of manifest.csv without one, or the `unlabelled/` folder)."""

    manifest: pd.DataFrame
    empty_folders: list[str]
    unlabelled: pd.DataFrame

    @property
    def classes(self) -> list[str]:
        """The classes the data hold: the manifest's labels and the empty class folders, sorted."""
        return sorted({*self.manifest["label"].astype(str), *self.empty_folders})


def scan_folders(root: Path) -> Discovery:
    """A folder per class: `root/<label>/**/*.{png,jpg,jpeg,dcm}`, and `root/unlabelled/` for images without one.

    Args:
        root: The data root (hidden folders are skipped).

    Returns:
        The manifest (empty patient_id and split), the names of class folders without images, and the
        unlabelled images.
    """
    from pipeline.imageio import IMAGE_SUFFIXES

    rows, empty, pool = [], [], []
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if folder.name == UNLABELLED:
            pool += [(p.relative_to(root).as_posix(), "", "", "") for p in files]
            continue
        empty += [] if files else [folder.name]
        rows += [(p.relative_to(root).as_posix(), folder.name, "", "") for p in files]
    columns = [*MANIFEST_COLUMNS, "split"]
    return Discovery(pd.DataFrame(rows, columns=columns), empty, pd.DataFrame(pool, columns=columns))


def discover(root: Path) -> Discovery:
    """The data set's manifest: `manifest.csv` if there is one, else the class folders.

    Args:
        root: The data root.

    Returns:
        The labelled images, the empty class folders (none when it comes from manifest.csv) and the unlabelled
        images.

    Raises:
        DataError: the folder is missing, holds neither manifest.csv nor class folders with images, or its
            manifest.csv cannot be read (see read_manifest).
    """
    if (root / MANIFEST).is_file():
        rows = read_manifest(root)
        labelled = rows["label"] != ""
        return Discovery(rows[labelled].reset_index(drop=True), [], rows[~labelled].reset_index(drop=True))
    if not root.is_dir():
        raise DataError(root, "data folder not found")
    found = scan_folders(root)
    if found.manifest.empty and not found.empty_folders:
        raise DataError(root, "no manifest.csv and no class folders with images (<label>/*.png|jpg|dcm)")
    return found


class NpzImport(NamedTuple):
    """What `import_npz` wrote: the manifest (path, label, patient_id, split) and how many val/test
    images it left out as copies of an earlier split's."""

    manifest: pd.DataFrame
    dropped: int


def import_npz(source: Path, out: Path, labels: list[str] | None = None, drop_duplicates: bool = False) -> NpzImport:
    """Turn a MedMNIST-style npz (`{train,val,test}_{images,labels}`) into PNGs + a manifest with splits.

    With `drop_duplicates`, a val or test image whose pixels already appear in an earlier split is
    left out (validation would otherwise stop on it as leakage); `dropped` counts them.

    Args:
        source: The .npz file.
        out: The data root to write images/ and manifest.csv into.
        labels: Class names by label number; None or empty: `class_<n>`.
        drop_duplicates: Leave out val/test images whose pixels appear in an earlier split.

    Returns:
        The manifest written and how many images were dropped.

    Raises:
        ConfigError: a class name cannot be a folder name inside `out` (see `check_label_names`).
        DataError: the npz is unreadable, lacks an array, or has more classes than names.
    """
    if labels:
        check_label_names(labels, out)
    try:
        npz = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(source, f"not a readable npz file ({err.__class__.__name__})") from None
    with npz:
        missing = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels") if f"{s}_{k}" not in npz]
        if missing:
            raise DataError(source, f"missing array(s) {', '.join(missing)}")
        rows, seen, dropped = [], set(), 0
        for split in ("train", "val", "test"):
            images, ys = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(len(npz[f"{split}_images"]), -1)[:, 0]
            if labels and int(ys.max(initial=0)) >= len(labels):
                raise DataError(source, f"{split} has label {int(ys.max())} but only {len(labels)} names were given")
            digests = [hashlib.sha256(img.tobytes()).hexdigest() for img in images]
            keep = [not (drop_duplicates and d in seen) for d in digests]
            dropped += keep.count(False)
            rows += [r for r, k in zip(_write_split(images, ys, split, out, labels, keep), keep) if k]
            seen.update(digests)
    manifest = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, "split"])
    manifest.to_csv(out / MANIFEST, index=False, lineterminator="\n")
    return NpzImport(manifest, dropped)


def check_label_names(labels: list[str], out: Path) -> None:
    """Refuse class names that are not one plain folder name inside `out` (they become folder names).

    Args:
        labels: The class names.
        out: The data root the images would be written under.

    Raises:
        ConfigError: (file `--labels`) a name is empty, `.` or `..`, holds a path separator or NUL, or
            would resolve outside `out`.
    """
    root = out.resolve()
    for name in labels:
        if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise ConfigError("--labels", f"class name {name!r} is not a plain folder name")
        if not _inside(root / "images" / "train" / name, root):
            raise ConfigError("--labels", f"class name {name!r} would write outside {out}")


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks resolved, lies inside the (resolved) folder `root`."""
    return path.resolve().is_relative_to(root)


def _write_split(
    images: np.ndarray, ys: np.ndarray, split: str, out: Path, labels: list[str] | None, keep: list[bool]
) -> list[tuple]:
    rows = []
    for i, (img, y) in enumerate(zip(images, ys)):
        label = labels[int(y)] if labels else f"class_{int(y)}"
        rel = Path("images") / split / label / f"{split}_{i:06d}.png"
        rows.append((rel.as_posix(), label, f"{split}_{i:06d}", split))
        if not keep[i]:
            continue
        if not _inside(out / rel, out.resolve()):  # e.g. a folder under out that is a symlink elsewhere
            raise ConfigError("--labels", f"{rel.as_posix()} would be written outside {out}")
        (out / rel.parent).mkdir(parents=True, exist_ok=True)
        pixels = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 and img.shape[2] == 3 else img
        cv2.imwrite(str(out / rel), pixels)
    return rows
