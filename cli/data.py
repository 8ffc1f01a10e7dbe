"""`medpipe data ...`: build, inspect and version data sets (DVC)."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import ParamsOpt, console, err_console
from pipeline.errors import MedpipeError


def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write images and manifest.csv to.")] = Path("data"),
    patients: Annotated[int, typer.Option(min=3, help="Number of patients (2-4 images each).")] = 200,
    size: Annotated[int, typer.Option(min=16, help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
    force: Annotated[bool, typer.Option(metavar="", help="Overwrite an existing manifest.")] = False,
) -> None:
    """Generate the built-in synthetic chest-radiograph set (normal / nodule / effusion)."""
    from pipeline.data import MANIFEST, synthesize

    if (out / MANIFEST).exists() and not force:
        raise MedpipeError(out / MANIFEST, "already exists; use --force to overwrite")
    manifest = synthesize(out, patients, size, seed)
    counts = manifest["label"].value_counts().to_dict()
    console.print(f"wrote {len(manifest)} images of {manifest['patient_id'].nunique()} patients to {out} {counts}")


def data_scan(
    data: Annotated[Path, typer.Argument(help="Data root: manifest.csv or a folder per class.")],
    out: Annotated[Path, typer.Option(help="CSV to write (also the cache for the next scan).")] = Path(
        "outputs/scan.csv"
    ),
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
) -> None:
    """Scan every image: sha256, size, channels, bit depth, intensity, blur, readable (incremental)."""
    import pandas as pd

    from pipeline.data import discover
    from pipeline.scan import label_summary, scan

    manifest, empty, unlabelled = discover(data)
    manifest = pd.concat([manifest, unlabelled.assign(label="(unlabelled)")], ignore_index=True)
    table = scan(data, manifest["path"].tolist(), cache=out, workers=workers, progress=console.is_terminal)
    table.insert(1, "label", manifest["label"].to_numpy())
    summary = Table(title=f"{data}: {len(table)} images", show_header=True)
    for column in ("label", "images", "unreadable", "sizes (w x h)", "mean std", "min blur"):
        summary.add_column(column)
    for row in label_summary(table):
        summary.add_row(*row)
    console.print(summary)
    for folder in empty:
        err_console.print(f"warning: {data / folder}: empty class folder")
    for row in table[~table["readable"].astype(bool)].itertuples():
        err_console.print(f"warning: {data / row.path}: {row.error}", markup=False, soft_wrap=True)
    console.print(f"wrote {out}")


def data_duplicates(
    data: Annotated[Path, typer.Argument(help="Data root: manifest.csv or a folder per class.")],
    threshold: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=63,
            help="Largest Hamming distance "
            "(of 256 bits) of a near copy (default: params "
            "validate.near_duplicates.threshold).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="CSV of the pairs.")] = Path("outputs/duplicates.csv"),
    cache: Annotated[Path, typer.Option(help="Scan cache (incremental).")] = Path("outputs/cache/scan.csv"),
    windows: Annotated[
        bool | None,
        typer.Option(
            "--windows/--no-windows",
            help="Also find crops and shifts by 20 corner and 20 edge windows per image (default: params "
            "validate.near_duplicates.windows).",
            show_default=False,
        ),
    ] = None,
    small_threshold: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=63,
            help="Largest distance of a pair with an image under 32 px a side (default: params "
            "validate.near_duplicates.small_threshold; never below --threshold).",
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """List near-duplicate images (re-exports, resizes, JPEG copies, brightness changes, crops, shifts) in groups."""
    from pipeline.config import NearDuplicateParams, load_params
    from pipeline.scan import duplicate_pairs

    near = load_params(params).validate_.near_duplicates if params.is_file() else NearDuplicateParams()
    threshold = near.threshold if threshold is None else threshold
    small = max(threshold, near.small_threshold if small_threshold is None else small_threshold)
    pairs = duplicate_pairs(data, threshold, cache, near.windows if windows is None else windows, small)
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_csv(out, index=False, lineterminator="\n")
    summary = Table(title="near-duplicate groups (first 20)", show_header=True)
    for column in ("group (first image)", "images", "labels", "max distance"):
        summary.add_column(column)
    for group, rows in list(pairs.groupby("group", sort=True))[:20]:
        members = set(rows["path_a"]) | set(rows["path_b"])
        labels = sorted(set(rows["label_a"]) | set(rows["label_b"]))
        summary.add_row(str(group), str(len(members)), ", ".join(labels), str(rows["distance"].max()))
    console.print(summary)
    n_small = int(pairs["small"].sum())
    within = f"<= {threshold}" + (f" ({n_small} with an image under 32 px a side: <= {small})" if n_small else "")
    console.print(
        f"{pairs['group'].nunique()} near-duplicate group(s), {len(pairs)} pair(s) at distance {within} "
        f"in {data}; wrote {out}",
        soft_wrap=True,
        markup=False,
    )


def data_import_npz(
    source: Annotated[Path, typer.Argument(help="MedMNIST-style .npz file.")],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs and manifest.csv.")],
    labels: Annotated[
        str | None, typer.Option(help="Class names in label order, comma-separated (default class_0, class_1, ...).")
    ] = None,
    drop_duplicates: Annotated[
        bool,
        typer.Option(metavar="", help="Leave out val/test images whose pixels already appear in an earlier split."),
    ] = False,
) -> None:
    """Import a MedMNIST-format npz (train/val/test images and labels) as PNGs + manifest with its splits."""
    from pipeline.data import import_npz

    names = [n.strip() for n in labels.split(",")] if labels else None
    manifest, dropped = import_npz(source, out, names, drop_duplicates)
    counts = manifest.groupby(["split", "label"]).size().to_dict()
    console.print(f"wrote {len(manifest)} images to {out}: {counts}")
    if dropped:
        console.print(f"left out {dropped} val/test image(s) already present in an earlier split")
    shown = ", ".join(names or sorted(set(manifest["label"])))
    console.print(
        f"train on it: medpipe run --data {out} --set 'validate.labels=[{shown}]'", soft_wrap=True, markup=False
    )


def _dvc(*args: str, file: Path | str | None = None) -> str:
    """Run a DVC command; its last error line becomes `error: <file>: <reason>` (file: the command)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"dvc {args[0]} failed"])[-1].removeprefix("ERROR: ")
        raise MedpipeError(file or f"dvc {' '.join(args[:2])}", reason)
    return done.stdout


def data_add(data: Annotated[Path, typer.Argument(help="Data folder to version.")] = Path("data")) -> None:
    """Version the data folder with DVC (`dvc add`), updating its .dvc pointer; then commit it with git."""
    _dvc("add", str(data), file=data)
    console.print(f"updated {data}.dvc; record it: git add {data}.dvc && git commit -m 'data: ...'")


def remote_add(
    name: Annotated[str, typer.Argument(help="Remote name, e.g. team.")],
    url: Annotated[
        str,
        typer.Argument(
            help="s3://bucket/path, gs://bucket/path, ssh://host/path, azure://container/path or a local/NFS folder."
        ),
    ],
    default: Annotated[bool, typer.Option(metavar="", help="Make it the default remote (dvc push/pull).")] = True,
) -> None:
    """Add a DVC remote to the project (.dvc/config); commit that file so the team shares it.

    Cloud remotes need their DVC extra (pip install 'dvc[s3]', 'dvc[gs]', 'dvc[ssh]', ...) and the usual
    credentials; `dvc push` then uploads the data versions. The offline default remote (`local`, in
    .dvc/storage) keeps working.
    """
    _dvc("remote", "add", *(["--default"] if default else []), "--force", name, url)
    console.print(f"remote {name} -> {url}{' (default)' if default else ''}; push the data: dvc push", soft_wrap=True)


def remote_list() -> None:
    """The project's DVC remotes."""
    console.print(_dvc("remote", "list").rstrip() or "no remotes", soft_wrap=True)
