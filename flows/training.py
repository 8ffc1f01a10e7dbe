"""The training flow: validate → preprocess → balance → train → evaluate → register → promote."""

from pathlib import Path

from prefect import State, flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows.data import run_on_dask
from flows.promotion import promotion_flow
from pipeline import autoparams, card, lineage, preprocess, promote, registry, train, validate
from pipeline.config import Params, Workspace, load_params
from pipeline.errors import DataError, MedpipeError
from pipeline.lock import project_lock
from pipeline.steps import step
from pipeline.summary import TrainingSummary, UpToDate, evaluation_markdown, run_page


# The tasks are made as task(fn, **options): Prefect accepts that form at runtime, but its typed
# overloads of task() do not declare it (hence the call-overload ignores).
def _step(name: str):
    """A Prefect task running one declared step's `run_step(params, workspace, *results)` (pipeline/steps.py)."""
    return task(step(name).run, name=name, cache_policy=NO_CACHE)  # type: ignore[call-overload]


def _validate(params: Params, ws: Workspace):
    """Validate and publish the report; invalid data fail the task (a red task in the Prefect UI, with the
    one-line reason and no traceback: the task returns a Failed state rather than raising)."""
    report = step("validate").run(params, ws)
    _publish_validation(report, ws)
    return report if report.success else Failed(message=str(validate.failure(report, ws.data_root)))


def _publish_validation(report: validate.ValidationReport, ws: Workspace) -> None:
    create_markdown_artifact(
        Path(report.report_md).read_text(),
        key="medpipe-data-validation",
        description=f"data validation of {ws.data_root.name}: {report.summary()}",
    )


validate_task = task(_validate, name="validate", cache_policy=NO_CACHE)  # type: ignore[call-overload]


def _preprocess_key(context, arguments: dict) -> str | None:
    """Cache key of the preprocess task: its outputs' folder and the data + params hash, as long as
    those outputs are still there (else None: run, and the step rebuilds them)."""
    params, ws = arguments["params"], arguments["ws"]
    key = preprocess.cache_key(params, arguments["validated"])
    return f"preprocess-{ws.out}-{key}" if preprocess.is_current(ws.out / "preprocess", key) else None


preprocess_task = task(step("preprocess").run, name="preprocess", cache_key_fn=_preprocess_key, persist_result=True)  # type: ignore[call-overload]
balance_task = _step("balance")
train_task = _step("train")
evaluate_task = _step("evaluate")
register_task = _step("register")
card_task = _step("card")
record_dvc_task = task(lineage.record_dvc_outputs, name="record-dvc-outputs", cache_policy=NO_CACHE)  # type: ignore[call-overload]
up_to_date_task = task(lineage.up_to_date, name="up-to-date", cache_policy=NO_CACHE)  # type: ignore[call-overload]


@flow(name="medpipe-training", log_prints=True)
def training_flow(
    params_file: str = "params.yaml",
    data: str | None = None,
    overrides: dict[str, str] | None = None,
    resume: bool = False,
    force: bool = False,
) -> TrainingSummary | UpToDate | State:
    """Train, evaluate, register and gate a classifier; stop before preprocessing if the data are invalid,
    and train nothing if the newest model already came from this data, params and code (unless `force`;
    a version a crash left ungated is gated instead). With `resume`, continue the interrupted training
    run from its checkpoint. One run at a time per project: a second one waits for the first.

    Args:
        params_file: The params file.
        data: The data root (None: the params' own).
        overrides: `--set` overrides of params, dotted key to value.
        resume: Continue an interrupted training run from its checkpoint.
        force: Train even when the newest model already came from this data, params and code.

    Returns:
        The run's summary, UpToDate when nothing needed training, or a Failed state with the one-line
        error of a MedpipeError.
    """
    params: Params = load_params(Path(params_file), overrides)
    ws = Workspace.create(params, Path(params_file), Path(data) if data else None)
    with project_lock(ws.base):
        try:
            # labels and colour `auto` (or --data without pinned labels): decided before anything is hashed
            resolved = autoparams.resolve(
                params, ws.data_root, autoparams.labels_from_data(data is not None, overrides)
            )
            params = resolved.params
            for note in resolved.notes:
                print(note)
            recover_task(params, ws)
            registry.check_task(params, ws)
            resuming = resume and train.has_checkpoint(params, ws)
            if resume and not resuming:
                print("nothing to resume (no checkpoint of an interrupted run): training afresh")
            match = None if force or resuming else up_to_date_task(params, ws)
            if match is not None:
                return _finish(params, ws, match)
            return _train_and_promote(params, ws, params_file, overrides, resuming)
        except MedpipeError as err:
            return Failed(message=str(err))


def _recover(params: Params, ws: Workspace) -> None:
    """Clean up after a killed run: close its RUNNING MLflow runs, finish an interrupted alias change."""
    import mlflow

    registry.close_orphaned_runs(params.register_, ws.base)
    promote.recover(mlflow.MlflowClient(), params.register_.model_name)


recover_task = task(_recover, name="recover", cache_policy=NO_CACHE)  # type: ignore[call-overload]


def _finish(params: Params, ws: Workspace, match) -> UpToDate:
    """Nothing to train: gate the matching version first if a crash left it ungated."""
    finished = ""
    if not match.gated:
        _data_steps(params, ws)  # the current test split (cached when unchanged)
        decision = promotion_flow(params, ws, match.version)
        finished = f"the gate it had missed made it @{decision.alias}"
    missing = card.missing_inputs(params, ws, match.version)
    if missing is not None:  # a crash came between its gate and its card
        card_task(params, ws, *missing)
    done = UpToDate(params.register_.model_name, match.version, finished)
    create_markdown_artifact(done.message(), key="medpipe-training-summary", description="nothing to retrain")
    print(done.message())
    return done


def _data_steps(params: Params, ws: Workspace) -> tuple[validate.ValidationReport, preprocess.PreprocessResult | None]:
    """Validate, then preprocess if the data pass: on Dask when params ask for it, else as two tasks here."""
    on_dask = run_on_dask(params, ws)
    if on_dask is not None:
        report, prepared = on_dask
        _publish_validation(report, ws)
        if not report.success:
            raise validate.failure(report, ws.data_root)
        return report, prepared
    state = validate_task(params, ws, return_state=True)
    prefix = f"{ws.data_root}: "
    if state.is_failed() and (state.message or "").startswith(prefix + "data validation failed"):
        raise DataError(ws.data_root, state.message.removeprefix(prefix))
    report = state.result()  # re-raises any failure other than invalid data
    return report, preprocess_task(params, ws, report)


def _train_and_promote(
    params: Params, ws: Workspace, params_file: str, overrides: dict[str, str] | None, resume: bool
) -> TrainingSummary:
    report, prepared = _data_steps(params, ws)
    balanced = balance_task(params, ws, prepared)
    trained = train_task(params, ws, report, prepared, balanced, resume=resume)
    evaluated = evaluate_task(params, ws, report, prepared, trained)
    uri = registry.tracking_uri(params.register_, ws.base)
    create_markdown_artifact(
        evaluation_markdown(evaluated.report_md, trained.run_id, uri, run_page(uri, trained.run_id)),
        key="medpipe-evaluation",
        description="test and validation metrics with 95% intervals, and the summary figures",
    )
    registered = register_task(params, ws, prepared, trained)
    decision = promotion_flow(params, ws, registered.version)
    carded = card_task(params, ws, report, evaluated, registered, decision)
    print(record_dvc_task(params, ws, Path(params_file), overrides))
    summary = TrainingSummary.collect(params, ws, prepared, balanced, trained, evaluated, registered, decision, carded)
    create_markdown_artifact(
        summary.markdown(),
        key="medpipe-training-summary",
        description="medpipe training run: model version, lineage and test metrics",
    )
    return summary
