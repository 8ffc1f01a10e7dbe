"""`medpipe run`, `validate`, `stage` and `schedule`: the training flow, its steps, and its schedule."""

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import ParamsOpt, SetOpt, console, err_console, parse_overrides, say, show_library_log
from pipeline.errors import ConfigError
from pipeline.steps import STEPS

# The steps `medpipe stage` runs, as typer choices (pipeline/steps.py declares them).
StepName = Enum("StepName", {s.name: s.name for s in STEPS}, type=str)  # type: ignore[misc]  # members from STEPS


def run(
    data: Annotated[
        Path | None, typer.Option(help="Data root holding manifest.csv (default: params data.root).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    resume: Annotated[
        bool,
        typer.Option(
            metavar="",
            help="Continue an interrupted training run from its last "
            "checkpoint (same data and params give the same result).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(metavar="", help="Train even if the newest model already came from this data, params and code."),
    ] = False,
) -> None:
    """Run the whole training flow (Prefect): validate, preprocess, balance, train, evaluate, register, promote.

    The data steps run on Dask when params ask for it (dask.workers, dask.address or
    $MEDPIPE_DASK_ADDRESS); see docs/scaling.md.
    """
    import json
    import sys

    from pipeline.config import load_params

    overrides = parse_overrides(set_)
    config = load_params(params, overrides)  # fail fast on a bad params file, before Prefect starts
    from flows.data import check_scheduler
    from flows.training import training_flow

    if data is not None and not data.is_dir():  # before any server starts
        raise ConfigError(data, f"data folder not found (looked in {data.resolve().parent})")
    check_scheduler(config.dask)  # and on a Dask scheduler that does not answer
    from pipeline.autoparams import labels_from_data, resolve
    from pipeline.config import Workspace

    # another task's classes: say so now (the flow decides labels and colour `auto` again, as it must
    # for scheduled runs; it is cheap)
    resolve(config, Workspace.create(config, params, data).data_root, labels_from_data(data is not None, overrides))
    from pipeline.watchdog import guard_descendants

    # a killed run takes Prefect's temporary server (and any Dask cluster) with it, and its MLflow run is
    # closed as KILLED at once (not only by the next command)
    guard_descendants(
        then=[sys.executable, "-m", "pipeline.registry", "close-orphans", str(params.resolve()), json.dumps(overrides)]
    )

    state = training_flow(
        params_file=str(params),
        data=str(data) if data else None,
        overrides=overrides,
        resume=resume,
        force=force,
        return_state=True,
    )
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
    from pipeline.semi import POOL

    sizes = summary.split_sizes
    table.add_row("images (train/val/test)", "/".join(str(sizes.get(s, 0)) for s in ("train", "val", "test")))
    if POOL in sizes:
        table.add_row("unlabelled pool (semi)", str(sizes[POOL]))
    table.add_row("epochs", str(summary.epochs_run))
    table.add_row("promotion", summary.promotion)
    for key, value in summary.test_metrics.items():
        table.add_row(f"test {key}", f"{value:.3f}")
    console.print(table)
    console.print(f"Model: models:/{summary.model_name}/{summary.version}")
    if summary.card:
        console.print(f"Model card: {summary.card}", soft_wrap=True)
    console.print(f"Browse: {summary.ui_hint()}", soft_wrap=True)


def validate(
    data: Annotated[Path, typer.Argument(help="Data root: manifest.csv or a folder per class.")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    report_dir: Annotated[
        Path | None, typer.Option(help="Where the reports go (default: outputs/reports/<DATA name>).")
    ] = None,
) -> None:
    """Validate a data set with Great Expectations; exit 1 if any error check fails."""
    from pipeline import steps
    from pipeline import validate as step
    from pipeline.autoparams import labels_from_data, resolve
    from pipeline.config import Workspace, load_params

    overrides = parse_overrides(set_)
    p = load_params(params, overrides)
    ws = Workspace.create(p, params, data)
    p, notes = resolve(p, ws.data_root, labels_from_data(True, overrides))
    for note in notes:
        console.print(note, markup=False, soft_wrap=True)
    report = steps.step("validate").run(p, ws, report_dir or ws.out / "reports" / ws.data_root.name)
    for check in report.warnings:
        err_console.print(f"warning: {check.name}: {'; '.join(check.unexpected[:3])}", markup=False, soft_wrap=True)
    if not report.success:
        raise step.failure(report, ws.data_root)
    console.print(f"ok: {report.summary()}; report: {report.report_md}", soft_wrap=True)


def stage(
    step: Annotated[StepName, typer.Argument(help="Which step to run.")],
    params: ParamsOpt = Path("params.yaml"),
    resume: Annotated[bool, typer.Option(metavar="", help="train: continue from the last checkpoint.")] = False,
) -> None:
    """Run one step on its own, as the DVC stages of dvc.yaml do."""
    from pipeline.config import Workspace, load_params
    from pipeline.lock import project_lock
    from pipeline.steps import step as declared

    show_library_log()  # epoch lines, registrations: what a DVC stage prints
    p = load_params(params)
    ws = Workspace.create(p, params)
    options = {"resume": True} if resume and step.value == "train" else {}
    with project_lock(ws.base, say=say):  # never under a running flow's feet
        result = declared(step.value).stage(p, ws, **options)
    if step.value == "validate" and not result.success:
        from pipeline.validate import failure

        raise failure(result, ws.data_root)
    console.print(f"{step.value}: done")


def schedule(
    cron: Annotated[str, typer.Option(help='When to retrain, cron syntax in UTC, e.g. "0 2 * * 1" (Mondays 02:00).')],
    params: ParamsOpt = Path("params.yaml"),
    name: Annotated[str, typer.Option(help="Deployment name.")] = "medpipe-retraining",
    timezone: Annotated[str, typer.Option(help="Time zone of the cron expression.")] = "UTC",
) -> None:
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
        raise ConfigError(
            "PREFECT_API_URL",
            "scheduled runs need a Prefect server (the temporary one cannot "
            "schedule): run `make prefect-server` and export PREFECT_API_URL=http://127.0.0.1:4200/api",
        )
    from flows.training import training_flow

    try:
        when = CronSchedule(cron=cron, timezone=timezone)
    except ValueError as err:
        raise ConfigError("--cron", f"not a valid cron schedule: {cron!r} ({err.__class__.__name__})") from None
    from pipeline.watchdog import guard_descendants

    guard_descendants()  # runs it starts die with it
    training_flow.serve(
        name=name,
        schedules=[when],
        parameters={"params_file": str(params.resolve())},
        global_limit=1,
        description="medpipe scheduled retraining: skips when nothing changed, one run at a time",
    )


def tune(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    trials: Annotated[int | None, typer.Option(help="Budget: finished trials in all (default: tune.trials).")] = None,
    minutes: Annotated[
        float | None, typer.Option(help="Budget: wall-clock minutes of this run (default: tune.minutes).")
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(
            help="Trials trained at once (default: tune.parallel): on the Dask scheduler of dask.address, "
            "else on that many local processes."
        ),
    ] = None,
    register: Annotated[
        bool,
        typer.Option(metavar="", help="Then train the best recipe through the normal flow (registry and gate)."),
    ] = False,
) -> None:
    """Search for a training recipe (Optuna over the params in tune.space), scored on validation only.

    A stopped study resumes where it ended (outputs/tune/study.db).

    Each trial is an MLflow run nested under the study's run.

    The best trial's params go to outputs/tune/best_params.yaml.
    """
    from pipeline.autoparams import labels_from_data, resolve
    from pipeline.config import Workspace, load_params
    from pipeline.lock import project_lock
    from pipeline.tune import check_space
    from pipeline.tune import overrides as as_overrides
    from pipeline.tune import run as run_study

    extra = {"tune.trials": str(trials)} if trials is not None else {}
    extra |= {"tune.minutes": str(minutes)} if minutes is not None else {}
    extra |= {"tune.parallel": str(parallel)} if parallel is not None else {}
    overrides = parse_overrides(set_)
    p = load_params(params, {**overrides, **extra})
    check_space(p)  # before any work
    ws = Workspace.create(p, params)
    p, notes = resolve(p, ws.data_root, labels_from_data(False, overrides))
    for note in notes:
        console.print(note, markup=False, soft_wrap=True)

    def show(line: str) -> None:
        console.print(line, markup=False, soft_wrap=True)

    with project_lock(ws.base, say=say):
        if p.tune.parallel > 1:
            from flows.data import trial_executor

            with trial_executor(p.dask, p.tune.parallel) as executor:
                result = run_study(p, ws, say=show, executor=executor)
        else:
            result = run_study(p, ws, say=show)
    for note in result.notes:
        console.print(note, markup=False, soft_wrap=True)
    title = f"{result.study}: {result.metric} on the validation split ({result.direction})"
    table = Table(title=f"{title}; {result.new_trials} new trial(s)")
    for column in ("trial", "state", result.metric, *(result.trials[0].params if result.trials else ())):
        table.add_column(column)
    for t in result.trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        marker = " *" if result.best is not None and t.number == result.best.number else ""
        shown = (f"{v:.4g}" if isinstance(v, float) else str(v) for v in t.params.values())
        table.add_row(f"{t.number}{marker}", t.state.lower(), value, *shown)
    console.print(table)
    if result.best is None:
        err_console.print("error: no trial finished; nothing to recommend", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"best: trial {result.best.number}; its params: {result.best_file}", soft_wrap=True)
    chosen = as_overrides(result.best.params)
    console.print("train it: medpipe run " + " ".join(f"--set {k}={v}" for k, v in chosen.items()), soft_wrap=True)
    if register:
        from flows.training import training_flow

        state = training_flow(params_file=str(params), overrides={**overrides, **chosen}, return_state=True)
        if state.is_failed():
            err_console.print(f"error: {state.message}", markup=False, soft_wrap=True)
            raise typer.Exit(1)
        _print_summary(state.result())
