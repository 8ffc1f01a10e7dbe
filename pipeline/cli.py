"""The `medpipe` command line (typer + rich). Heavy libraries load only inside commands."""

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import ConfigError, MedpipeError

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(help="medpipe: reproducible training of CNN classifiers for medical images.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, context_settings=HELP)
data_app = typer.Typer(help="Build and inspect data sets.", no_args_is_help=True, context_settings=HELP)
app.add_typer(data_app, name="data")
label_app = typer.Typer(help="Help experts label images.", no_args_is_help=True, context_settings=HELP)
app.add_typer(label_app, name="label")
console = Console(markup=False)  # user paths and labels may contain [brackets]
err_console = Console(stderr=True, markup=False)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameter file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override one parameter: KEY=VALUE, "
                                                     "e.g. --set train.epochs=3 (repeatable).")]


def _version(value: bool) -> None:
    if value:
        from pipeline import __version__

        console.print(f"medpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                                help="Print medpipe's version and exit.")] = False) -> None:
    """medpipe: reproducible training of CNN classifiers for medical images."""


class Step(str, Enum):
    validate = "validate"
    preprocess = "preprocess"
    balance = "balance"
    train = "train"
    evaluate = "evaluate"
    register = "register"
    promote = "promote"


def _overrides(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


@app.command()
def run(data: Annotated[Optional[Path], typer.Option(help="Data root holding manifest.csv "
                                                     "(default: params data.root).")] = None,
        params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
        resume: Annotated[bool, typer.Option(metavar="", help="Continue an interrupted training run from its last "
                                             "checkpoint (same data and params give the same result).")] = False,
        force: Annotated[bool, typer.Option(metavar="", help="Train even if the newest model already came from this data, "
                                            "params and code.")] = False) -> None:
    """Run the whole training flow (Prefect): validate, preprocess, balance, train, evaluate, register, promote.

    The data steps run on Dask when params ask for it (dask.workers, dask.address or
    $MEDPIPE_DASK_ADDRESS); see docs/scaling.md.
    """
    import json
    import sys

    from pipeline.config import load_params

    overrides = _overrides(set_)
    config = load_params(params, overrides)  # fail fast on a bad params file, before Prefect starts
    from flows.data import check_scheduler
    from flows.training import training_flow

    if data is not None and not data.is_dir():  # before any server starts
        raise ConfigError(data, f"data folder not found (looked in {data.resolve().parent})")
    check_scheduler(config.dask)  # and on a Dask scheduler that does not answer
    from pipeline.watchdog import guard_descendants

    # a killed run takes Prefect's temporary server (and any Dask cluster) with it, and its MLflow run is
    # closed as KILLED at once (not only by the next command)
    guard_descendants(then=[sys.executable, "-m", "pipeline.registry", "close-orphans", str(params.resolve()),
                            json.dumps(overrides)])

    state = training_flow(params_file=str(params), data=str(data) if data else None, overrides=overrides,
                          resume=resume, force=force, return_state=True)
    if state.is_failed():
        err_console.print(f"error: {state.message}", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    _print_summary(state.result())


def _print_summary(summary) -> None:
    if not hasattr(summary, "run_id"):  # UpToDate: nothing was trained
        console.print(summary.message(), soft_wrap=True)
        return
    table = Table(title=f"{summary.model_name} version {summary.version}", show_header=False)
    table.add_row("MLflow run", summary.run_id)
    table.add_row("data md5", summary.data_md5)
    table.add_row("images (train/val/test)", "/".join(str(v) for v in summary.split_sizes.values()))
    table.add_row("epochs", str(summary.epochs_run))
    table.add_row("promotion", summary.promotion)
    for key, value in summary.test_metrics.items():
        table.add_row(f"test {key}", f"{value:.3f}")
    console.print(table)
    console.print(f"Model: models:/{summary.model_name}/{summary.version}")
    console.print(f"Browse: {summary.ui_hint()}", soft_wrap=True)


@app.command()
def validate(data: Annotated[Path, typer.Argument(help="Data root: manifest.csv or a folder per class.")],
             params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None,
             report_dir: Annotated[Optional[Path], typer.Option(help="Where the reports go "
                                                                "(default: outputs/reports/<DATA name>).")] = None
             ) -> None:
    """Validate a data set with Great Expectations; exit 1 if any error check fails."""
    from pipeline import validate as step
    from pipeline.config import Workspace, load_params

    p = load_params(params, _overrides(set_))
    ws = Workspace.create(p, params, data)
    report = step.run_step(p, ws, report_dir or ws.out / "reports" / ws.data_root.name)
    for check in report.warnings:
        err_console.print(f"warning: {check.name}: {'; '.join(check.unexpected[:3])}", markup=False, soft_wrap=True)
    if not report.success:
        raise step.failure(report, ws.data_root)
    console.print(f"ok: {report.summary()}; report: {report.report_md}", soft_wrap=True)


@app.command()
def stage(step: Annotated[Step, typer.Argument(help="Which step to run.")],
          params: ParamsOpt = Path("params.yaml"),
          resume: Annotated[bool, typer.Option(metavar="", help="train: continue from the last checkpoint.")] = False) -> None:
    """Run one step on its own, as the DVC stages of dvc.yaml do."""
    import importlib

    from pipeline.config import Workspace, load_params

    from pipeline.lock import project_lock

    p = load_params(params)
    ws = Workspace.create(p, params)
    module = importlib.import_module("pipeline.registry" if step is Step.register else f"pipeline.{step.value}")
    with project_lock(ws.base, say=_say):  # never under a running flow's feet
        result = module.run_step(p, ws, resume=True) if resume and step is Step.train else module.run_step(p, ws)
    if step is Step.validate and not result.success:
        from pipeline.validate import failure

        raise failure(result, ws.data_root)
    console.print(f"{step.value}: done")


@app.command()
def explain(image: Annotated[Path, typer.Argument(help="Image file (PNG, JPEG or DICOM).")],
            model: Annotated[Optional[str], typer.Option(help="Registered model: models:/NAME/VERSION, "
                                                         "models:/NAME@ALIAS or models:/NAME/latest (default: "
                                                         "register.model_name@champion).")] = None,
            out: Annotated[Path, typer.Option(help="Where to write the Grad-CAM picture.")] = Path("cam.png"),
            params: ParamsOpt = Path("params.yaml")) -> None:
    """Explain one prediction: the class probabilities, and a Grad-CAM overlay of where they came from."""
    import json

    import cv2

    from pipeline.config import load_params
    from pipeline.explain import captioned, grad_cam, overlay
    from pipeline.model import input_params
    from pipeline.preprocess import load_image
    from pipeline.registry import load_registered, model_uri

    p = load_params(params)
    net, classes, version = load_registered(model or model_uri(p.register_), p.register_, params.resolve().parent)
    x = load_image(image, input_params(net, p.preprocess))
    cam, proba = grad_cam(net, x)
    names = classes or [str(i) for i in range(len(proba))]
    top = int(proba.argmax())
    cv2.imwrite(str(out), captioned(overlay(x, cam), [image.name, f"predicted: {names[top]} (p = {proba[top]:.2f})"]))
    print(json.dumps({"model": model or model_uri(p.register_), "version": version, "predictions": [
        {"image": str(image), "label": names[int(proba.argmax())],
         "probabilities": {n: round(float(v), 4) for n, v in zip(names, proba)}, "explanation": str(out)}]},
        indent=2))  # the same shape as `medpipe predict`


@app.command()
def predict(images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG or DICOM).")],
            model: Annotated[Optional[str], typer.Option(help="Registered model: models:/NAME/VERSION, "
                                                         "models:/NAME@ALIAS or models:/NAME/latest (default: "
                                                         "register.model_name@champion).")] = None,
            params: ParamsOpt = Path("params.yaml")) -> None:
    """Classify images with a registered model; print JSON: label and class probabilities per image."""
    import json

    import numpy as np

    from pipeline.config import load_params
    from pipeline.preprocess import prepare_image
    from pipeline.registry import load_classifier, model_uri

    p = load_params(params)
    model = model or model_uri(p.register_)
    classifier, version = load_classifier(model, p.register_, params.resolve().parent, p.preprocess)
    x = np.stack([prepare_image(path, classifier.pp) for path in images]).astype(np.float32) / 255.0
    proba = np.asarray(classifier.model.predict(x, verbose=0), dtype=np.float64)
    rows = [{"image": str(path), "label": classifier.classes[int(pr.argmax())],
             "probabilities": {c: round(float(v), 4) for c, v in zip(classifier.classes, pr)}}
            for path, pr in zip(images, proba)]
    print(json.dumps({"model": model, "version": version, "predictions": rows}, indent=2))


@label_app.command("suggest")
def label_suggest(images: Annotated[Path, typer.Option(help="Folder of unlabelled images (searched recursively).")],
                  model: Annotated[Optional[str], typer.Option(help="Registered model URI (default: "
                                                               "register.model_name@champion).")] = None,
                  out: Annotated[Path, typer.Option(help="CSV to write; Grad-CAM thumbnails go beside it.")]
                  = Path("outputs/label_suggestions.csv"),
                  params: ParamsOpt = Path("params.yaml")) -> None:
    """Suggest labels: predicted label, confidence and entropy per image, least certain first, with Grad-CAMs."""
    from pipeline.config import load_params
    from pipeline.label import image_files, suggest
    from pipeline.registry import load_registered, model_uri

    files = image_files(images) if images.is_dir() else []
    if not files:
        raise MedpipeError(images, "no PNG, JPEG or DICOM images found")
    p = load_params(params)
    net, classes, version = load_registered(model or model_uri(p.register_), p.register_, params.resolve().parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = suggest(net, classes or [str(i) for i in range(net.output_shape[-1])], files, images,
                    out.with_name(out.stem + "_gradcam"), p.preprocess)
    table.to_csv(out, index=False, float_format="%.4f")
    console.print(f"{len(table)} images, model version {version}; review queue (least certain first): {out}")


@app.command()
def promote(version: Annotated[int, typer.Option(help="Model version to gate.")],
            force: Annotated[bool, typer.Option(metavar="", help="Make it champion whatever the gate says.")] = False,
            params: ParamsOpt = Path("params.yaml")) -> None:
    """Gate one version against @champion on the current test split; move aliases by the result.

    Waits for a running medpipe run of this project; prepares the test split first if the data changed.
    """
    from pipeline import preprocess as prep
    from pipeline import promote as gate
    from pipeline import validate as check
    from pipeline.config import Workspace, load_params
    from pipeline.lock import project_lock
    from pipeline.registry import close_orphaned_runs

    p = load_params(params)
    ws = Workspace.create(p, params)
    with project_lock(ws.base, say=_say):
        close_orphaned_runs(p.register_, ws.base, say=_say)
        report = check.run_step(p, ws)  # the current data's test split (both steps are cached)
        if not report.success:
            raise check.failure(report, ws.data_root)
        prep.run_step(p, ws)
        decision = gate.promote(p, ws, version, force)
        gate.write_decision(decision, ws)
    console.print(f"version {version}: {decision.alias}" + (" (forced)" if decision.forced else "")
                  + f" — {'; '.join(decision.reasons)}; aliases {decision.aliases}", soft_wrap=True)


def _say(message: str) -> None:
    err_console.print(message, soft_wrap=True)


@app.command()
def schedule(cron: Annotated[str, typer.Option(help='When to retrain, cron syntax in UTC, e.g. "0 2 * * 1" '
                                               '(Mondays 02:00).')],
             params: ParamsOpt = Path("params.yaml"),
             name: Annotated[str, typer.Option(help="Deployment name.")] = "medpipe-retraining",
             timezone: Annotated[str, typer.Option(help="Time zone of the cron expression.")] = "UTC") -> None:
    """Serve the training-and-promotion flow on a cron schedule (a Prefect deployment; runs until stopped).

    Each scheduled run trains only when data, params or code changed since the newest registered
    version, and one run at a time. Needs a Prefect server: `make prefect-server`, then
    PREFECT_API_URL=http://127.0.0.1:4200/api.
    """
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import get_current_settings

    from pipeline.config import load_params

    load_params(params)  # fail fast on a bad params file
    if not get_current_settings().api.url:
        raise ConfigError("PREFECT_API_URL", "scheduled runs need a Prefect server (the temporary one cannot "
                          "schedule): run `make prefect-server` and export PREFECT_API_URL=http://127.0.0.1:4200/api")
    from flows.training import training_flow

    try:
        when = CronSchedule(cron=cron, timezone=timezone)
    except ValueError as err:
        raise ConfigError("--cron", f"not a valid cron schedule: {cron!r} ({err.__class__.__name__})") from None
    from pipeline.watchdog import guard_descendants

    guard_descendants()  # runs it starts die with it
    training_flow.serve(name=name, schedules=[when],
                        parameters={"params_file": str(params.resolve())}, global_limit=1,
                        description="medpipe scheduled retraining: skips when nothing changed, one run at a time")


@app.command()
def reproduce(version: Annotated[int, typer.Option(help="Registered model version to rebuild.")],
              params: ParamsOpt = Path("params.yaml"),
              keep: Annotated[Optional[Path], typer.Option(help="Rebuild in this (empty) folder and keep it, "
                                                           "instead of a temporary one.")] = None) -> None:
    """Rebuild a model version from its lineage (git commit, DVC data version, params) and check that
    weights and metrics are identical; exit 0 if they are, 1 with the differences if not."""
    from pipeline.config import Workspace, load_params
    from pipeline.reproduce import reproduce as rebuild

    p = load_params(params)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    result = rebuild(p, Workspace.create(p, params), version, keep.resolve() if keep else None)
    for note in result.notes:
        console.print(f"note: {note}", soft_wrap=True)
    console.print(f"version {version} rebuilt from commit {result.commit[:12]}: weights "
                  f"{'identical' if result.same_weights else 'DIFFERENT'}, "
                  f"{'all metrics identical' if not result.differences else f'{len(result.differences)} metrics differ'}",
                  soft_wrap=True)
    for name, (was, now) in result.differences.items():
        console.print(f"  {name}: original {was!r}, rebuilt {now!r}")
    if not result.identical:
        raise typer.Exit(1)


@app.command()
def rollback(params: ParamsOpt = Path("params.yaml")) -> None:
    """Make @previous the champion again (the demoted one becomes @previous)."""
    from pipeline import promote as gate
    from pipeline.config import Workspace, load_params

    from pipeline.lock import project_lock

    p = load_params(params)
    ws = Workspace.create(p, params)
    with project_lock(ws.base, say=_say):
        console.print(f"aliases now {gate.rollback(p, ws)}")


@data_app.command("synth")
def data_synth(out: Annotated[Path, typer.Option(help="Folder to write images and manifest.csv to.")] = Path("data"),
               patients: Annotated[int, typer.Option(min=3, help="Number of patients (2-4 images each).")] = 200,
               size: Annotated[int, typer.Option(min=16, help="Image side in pixels.")] = 64,
               seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
               force: Annotated[bool, typer.Option(metavar="", help="Overwrite an existing manifest.")] = False) -> None:
    """Generate the built-in synthetic chest-radiograph set (normal / nodule / effusion)."""
    from pipeline.data import MANIFEST, synthesize

    if (out / MANIFEST).exists() and not force:
        raise MedpipeError(out / MANIFEST, "already exists; use --force to overwrite")
    manifest = synthesize(out, patients, size, seed)
    counts = manifest["label"].value_counts().to_dict()
    console.print(f"wrote {len(manifest)} images of {manifest['patient_id'].nunique()} patients to {out} {counts}")


@data_app.command("scan")
def data_scan(data: Annotated[Path, typer.Argument(help="Data root: manifest.csv or a folder per class.")],
              out: Annotated[Path, typer.Option(help="CSV to write (also the cache for the next scan).")]
              = Path("outputs/scan.csv"),
              workers: Annotated[Optional[int], typer.Option(help="Processes (default: all cores).")] = None) -> None:
    """Scan every image: sha256, size, channels, bit depth, intensity, blur, readable (incremental)."""
    from pipeline.data import discover
    from pipeline.scan import scan

    manifest, empty = discover(data)
    table = scan(data, manifest["path"].tolist(), cache=out, workers=workers, progress=console.is_terminal)
    table.insert(1, "label", manifest["label"].to_numpy())
    summary = Table(title=f"{data}: {len(table)} images", show_header=True)
    for column in ("label", "images", "unreadable", "sizes (w x h)", "mean std", "min blur"):
        summary.add_column(column)
    for label, group in table.groupby("label"):
        ok = group[group["readable"].astype(bool)]
        sizes = ", ".join(sorted({f"{w}x{h}" for w, h in zip(ok["width"], ok["height"])})[:3])
        summary.add_row(str(label), str(len(group)), str(len(group) - len(ok)), sizes,
                        f"{ok['std'].mean():.1f}" if len(ok) else "-", f"{ok['blur'].min():.1f}" if len(ok) else "-")
    console.print(summary)
    for folder in empty:
        err_console.print(f"warning: {data / folder}: empty class folder")
    for row in table[~table["readable"].astype(bool)].itertuples():
        err_console.print(f"warning: {data / row.path}: {row.error}", markup=False, soft_wrap=True)
    console.print(f"wrote {out}")


@data_app.command("duplicates")
def data_duplicates(data: Annotated[Path, typer.Argument(help="Data root: manifest.csv or a folder per class.")],
                    threshold: Annotated[Optional[int], typer.Option(min=0, max=63, help="Largest Hamming distance "
                                                                     "(of 256 bits) of a near copy (default: params "
                                                                     "validate.near_duplicates.threshold).")] = None,
                    out: Annotated[Path, typer.Option(help="CSV of the pairs.")] = Path("outputs/duplicates.csv"),
                    cache: Annotated[Path, typer.Option(help="Scan cache (incremental).")]
                    = Path("outputs/cache/scan.csv"), params: ParamsOpt = Path("params.yaml")) -> None:
    """List near-duplicate images (re-exports, resizes, JPEG copies, brightness changes) in groups."""
    from pipeline.config import load_params
    from pipeline.near_duplicates import duplicate_pairs

    if threshold is None:
        threshold = load_params(params).validate_.near_duplicates.threshold if params.is_file() else 20
    pairs = duplicate_pairs(data, threshold, cache)
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
    console.print(f"{pairs['group'].nunique()} near-duplicate group(s), {len(pairs)} pair(s) at distance <= "
                  f"{threshold} in {data}; wrote {out}", soft_wrap=True)


@data_app.command("import-npz")
def data_import_npz(source: Annotated[Path, typer.Argument(help="MedMNIST-style .npz file.")],
                    out: Annotated[Path, typer.Option(help="Folder for the PNGs and manifest.csv.")],
                    labels: Annotated[Optional[str], typer.Option(help="Class names in label order, "
                                                                  "comma-separated (default class_0, class_1, ...).")]
                    = None,
                    drop_duplicates: Annotated[bool, typer.Option(metavar="", help="Leave out val/test images whose pixels "
                                                                  "already appear in an earlier split.")] = False
                    ) -> None:
    """Import a MedMNIST-format npz (train/val/test images and labels) as PNGs + manifest with its splits."""
    from pipeline.data import import_npz

    names = [n.strip() for n in labels.split(",")] if labels else None
    manifest = import_npz(source, out, names, drop_duplicates)
    counts = manifest.groupby(["split", "label"]).size().to_dict()
    console.print(f"wrote {len(manifest)} images to {out}: {counts}")
    if manifest.attrs["dropped"]:
        console.print(f"left out {manifest.attrs['dropped']} val/test image(s) already present in an earlier split")
    names = ", ".join(names or sorted(set(manifest["label"])))
    console.print(f"train on it: medpipe run --data {out} --set 'validate.labels=[{names}]'", soft_wrap=True,
                  markup=False)


def _dvc(*args: str, file: Path | str | None = None) -> str:
    """Run a DVC command; its last error line becomes `error: <file>: <reason>` (file: the command)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"dvc {args[0]} failed"])[-1].removeprefix("ERROR: ")
        raise MedpipeError(file or f"dvc {' '.join(args[:2])}", reason)
    return done.stdout


@data_app.command("add")
def data_add(data: Annotated[Path, typer.Argument(help="Data folder to version.")] = Path("data")) -> None:
    """Version the data folder with DVC (`dvc add`), updating its .dvc pointer; then commit it with git."""
    _dvc("add", str(data), file=data)
    console.print(f"updated {data}.dvc; record it: git add {data}.dvc && git commit -m 'data: ...'")


remote_app = typer.Typer(help="DVC remotes where data versions are pushed and pulled.", no_args_is_help=True,
                         context_settings=HELP)
data_app.add_typer(remote_app, name="remote")


@remote_app.command("add")
def remote_add(name: Annotated[str, typer.Argument(help="Remote name, e.g. team.")],
               url: Annotated[str, typer.Argument(help="s3://bucket/path, gs://bucket/path, ssh://host/path, "
                                                  "azure://container/path or a local/NFS folder.")],
               default: Annotated[bool, typer.Option(metavar="", help="Make it the default remote (dvc push/pull).")] = True
               ) -> None:
    """Add a DVC remote to the project (.dvc/config); commit that file so the team shares it.

    Cloud remotes need their DVC extra (pip install 'dvc[s3]', 'dvc[gs]', 'dvc[ssh]', ...) and the usual
    credentials; `dvc push` then uploads the data versions. The offline default remote (`local`, in
    .dvc/storage) keeps working.
    """
    _dvc("remote", "add", *(["--default"] if default else []), "--force", name, url)
    console.print(f"remote {name} -> {url}{' (default)' if default else ''}; push the data: dvc push", soft_wrap=True)


@remote_app.command("list")
def remote_list() -> None:
    """The project's DVC remotes."""
    console.print(_dvc("remote", "list").rstrip() or "no remotes", soft_wrap=True)


def main() -> None:
    """Entry point: expected failures print one line and exit 1 (data) or 2 (usage)."""
    try:
        app()
    except MedpipeError as err:
        err_console.print(f"error: {err}", markup=False, soft_wrap=True)
        raise SystemExit(err.exit_code) from None


if __name__ == "__main__":
    main()
