"""The recipe search (`medpipe tune`): Optuna's TPE over params the user names, each trial trained like a normal
run and scored on the validation split only (the test split is not read), pruned when it trails.

The study lives in SQLite under outputs/tune, so a stopped search resumes where it stopped. Each trial is an
MLflow run nested under the study's run, which carries the best value so far. The result is a params override
file (outputs/tune/best_params.yaml) that `medpipe tune --register` (or `medpipe run --set ...`) trains through
the normal flow, gate included.
"""

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from pipeline.backend import select
from pipeline.config import TUNE_METRICS, Params, Range, Workspace, parse_params
from pipeline.errors import ConfigError
from pipeline.outputs import write_text
from pipeline.steps import step

log = logging.getLogger(__name__)

FOLDER = "tune"  # under outputs/
BEST_FILE = "best_params.yaml"
NOT_TUNABLE = ("data", "register", "tune", "card", "dask")  # where the data and models live, and how: not a recipe


@dataclass(frozen=True)
class Trial:
    """One finished (or pruned, or failed) trial."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None
    params: dict[str, Any]
    run_id: str | None


@dataclass(frozen=True)
class TuneResult:
    """The study after this invocation: its trials, the best one, and where its params were written."""

    study: str
    metric: str
    direction: str
    trials: list[Trial]
    best: Trial | None
    best_file: Path | None
    parent_run_id: str
    new_trials: int = 0
    notes: list[str] = field(default_factory=list)


def _default(params: Params, key: str) -> Any:
    """The current value of a dotted params key; ConfigError when there is none."""
    node: Any = params.model_dump(mode="json", by_alias=True)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"tune.space.{key}", "no such params key (use a dotted key such as train.learning_rate)")
        node = node[part]
    return node


def trial_params(params: Params, chosen: dict[str, Any]) -> Params:
    """The params of one trial: `params` with the chosen values set.

    Args:
        params: The base params.
        chosen: Dotted key to value.

    Returns:
        The validated trial params.

    Raises:
        ConfigError: a chosen value is not valid there (blamed on `tune.space.<key>`).
    """
    raw = params.model_dump(mode="json", by_alias=True)
    for key, value in chosen.items():
        node = raw
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return parse_params(raw, "tune.space")


def check_space(params: Params) -> None:
    """Refuse a search space that names unknown or untunable keys, or values the params reject, before any work.

    Args:
        params: The params (their `tune.space`).

    Raises:
        ConfigError: one line naming `tune.space.<key>`.
    """
    for key, choices in params.tune.space.items():
        if key.split(".")[0] in NOT_TUNABLE:
            raise ConfigError(f"tune.space.{key}", f"sections {', '.join(NOT_TUNABLE)} are not part of a recipe")
        if key == "train.backend":  # one process runs one backend; it changes how, not what, is trained
            raise ConfigError(f"tune.space.{key}", "the Keras backend is not part of a recipe")
        current = _default(params, key)
        if isinstance(current, dict):
            raise ConfigError(f"tune.space.{key}", "is a section; name one of its keys")
        values = [choices.low, choices.high] if isinstance(choices, Range) else choices
        for value in values:
            value = int(value) if isinstance(choices, Range) and choices.integer else value
            try:
                trial_params(params, {key: value})
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}", f"{value!r}: {err.reason}") from None


def study_name(params: Params, data_md5: str) -> str:
    """The study's name: the data version, the base params (without the budget or the parallelism) and the
    space and seed.
    The same search on the same data resumes; any other change starts a new study.

    Args:
        params: The params.
        data_md5: The data version.

    Returns:
        `tune-<12 hex>`.
    """
    tune = params.tune.model_dump(mode="json", exclude={"trials", "minutes", "parallel"})  # how, not what
    text = json.dumps({"data": data_md5, "params": params.md5(), "tune": tune}, sort_keys=True)
    return f"tune-{hashlib.md5(text.encode()).hexdigest()[:12]}"


def suggest(trial, space: dict) -> dict[str, Any]:
    """One trial's values from the space (Optuna's suggest_* calls).

    Args:
        trial: The optuna Trial.
        space: tune.space.

    Returns:
        Dotted key to value.
    """
    chosen: dict[str, Any] = {}
    for key, choices in space.items():
        if isinstance(choices, Range) and choices.integer:
            chosen[key] = trial.suggest_int(key, int(choices.low), int(choices.high), log=choices.log)
        elif isinstance(choices, Range):
            chosen[key] = trial.suggest_float(key, choices.low, choices.high, log=choices.log)
        else:
            chosen[key] = trial.suggest_categorical(key, choices)
    return chosen


def overrides(chosen: dict[str, Any]) -> dict[str, str]:
    """Chosen values as `--set KEY=VALUE` overrides (YAML values).

    Args:
        chosen: Dotted key to value.

    Returns:
        Dotted key to its YAML text.
    """
    return {
        key: yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        for key, value in chosen.items()
    }


def nested(chosen: dict[str, Any]) -> dict:
    """Dotted keys as the nested sections of a params file.

    Args:
        chosen: Dotted key to value.

    Returns:
        {"train": {"learning_rate": ...}, ...}.
    """
    tree: dict = {}
    for key, value in chosen.items():
        node = tree
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _data(params: Params, ws: Workspace, cache: dict) -> tuple:
    """Validate and preprocess once per distinct set of data params (outputs/tune/data-<key>), not per trial."""
    key = hashlib.md5(
        json.dumps(
            params.model_dump(mode="json", by_alias=True, include={"validate_", "preprocess"}), sort_keys=True
        ).encode()
    ).hexdigest()[:8]
    if key not in cache:
        data_ws = Workspace(base=ws.base, data_root=ws.data_root, out=ws.out / FOLDER / f"data-{key}")
        validated = step("validate").run(params, data_ws)
        if not validated.success:
            from pipeline import validate

            raise validate.failure(validated, ws.data_root)
        prepared = step("preprocess").run(params, data_ws, validated)
        cache[key] = (validated, prepared)
    return cache[key]


def _make_pruner(prune: bool):
    """The study's pruner: the median rule after two trials and one epoch, or none."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if prune else optuna.pruners.NopPruner()


def _pruner(trial, metric: str):
    """A Keras callback reporting the metric each epoch; it stops training when Optuna would prune."""
    import keras

    class Report(keras.callbacks.Callback):
        pruned = False

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = (logs or {}).get(metric)
            if value is None:
                return
            trial.report(float(value), epoch)
            if trial.should_prune():
                self.pruned = True
                self.model.stop_training = True

    return Report()


def _parent_run(params: Params, ws: Workspace, name: str) -> str:
    """The study's MLflow run (made on first use, found again on resume)."""
    import mlflow

    from pipeline.registry import setup_tracking

    experiment = setup_tracking(params.register_, ws.base)
    client = mlflow.MlflowClient()
    study = f"tags.`medpipe.tune.study` = '{name}' AND tags.`medpipe.tune.trial` IS NULL"  # not a trial's run
    found = client.search_runs([experiment], study, max_results=1)
    if found:
        return found[0].info.run_id
    tags = {"medpipe.tune.study": name, "medpipe.tune.metric": params.tune.metric}
    run = client.create_run(experiment, run_name=name, tags=tags)
    client.log_dict(run.info.run_id, params.tune.model_dump(mode="json"), "tune.yaml")
    return run.info.run_id


@dataclass(frozen=True)
class TrialOutcome:
    """What training one trial gave: its MLflow run, the metric at the kept epoch, and whether it was pruned."""

    run_id: str
    value: float
    best_epoch: int
    epochs_run: int
    pruned: bool


@dataclass(frozen=True)
class TrialJob:
    """One trial for a worker process (tune.parallel > 1): everything it needs, picklable."""

    params: Params  # the trial's params (the chosen values set)
    ws: Workspace
    data: tuple  # (validated, prepared): the data steps ran in the searching process
    trial_id: int
    study: str
    storage: str
    parent: str


def _train_trial(trial, params: Params, ws: Workspace, data: tuple, parent: str, name: str) -> TrialOutcome:
    """Balance and train one trial in outputs/tune/trials/NNNN, its MLflow run nested under the study's."""
    import mlflow

    validated, prepared = data
    trial_ws = Workspace(base=ws.base, data_root=ws.data_root, out=ws.out / FOLDER / "trials" / f"{trial.number:04d}")
    balanced = step("balance").run(params, trial_ws, prepared)
    select(params.train.backend)  # before the pruner's callback imports Keras
    report = _pruner(trial, params.tune.metric)
    tags = {"mlflow.parentRunId": parent, "medpipe.tune.study": name, "medpipe.tune.trial": str(trial.number)}
    trained = step("train").run(params, trial_ws, validated, prepared, balanced, callbacks=(report,), run_tags=tags)
    trial.set_user_attr("run_id", trained.run_id)
    history = json.loads((trained.folder(ws.base) / "history.json").read_text())
    value = float(history[params.tune.metric][trained.best_epoch - 1])  # the epoch whose weights were kept
    mlflow.MlflowClient().set_tag(trained.run_id, "medpipe.tune.state", "pruned" if report.pruned else "complete")
    return TrialOutcome(trained.run_id, value, trained.best_epoch, trained.epochs_run, report.pruned)


def _storage(url: str):
    """The study's SQLite storage, waiting up to 60 s for a lock (Python's default, 5 s, is short for trials
    that write their epochs from several processes beside the search's own writes on a busy machine; MLflow
    waits 20 s on its SQLite store)."""
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def run_trial(job: TrialJob) -> TrialOutcome:
    """Train one trial in a worker process, reporting its epochs to the shared study (for pruning).

    Args:
        job: The trial, as the searching process asked it of the study.

    Returns:
        The trial's outcome; the searching process tells the study.
    """
    import optuna

    from pipeline import configure_offline

    configure_offline()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=job.study, storage=_storage(job.storage), pruner=_make_pruner(job.params.tune.prune)
    )
    trial = optuna.trial.Trial(study, job.trial_id)
    frozen = study.get_trials(deepcopy=False)[trial.number]
    if frozen.state != optuna.trial.TrialState.RUNNING or "run_id" in frozen.user_attrs or frozen.intermediate_values:
        raise RuntimeError(f"trial {trial.number} was started before: it is not trained twice")
    return _train_trial(trial, job.params, job.ws, job.data, job.parent, job.study)


def _shown(chosen: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())


def _said(say: Callable[[str], None], number: int, chosen: dict[str, Any], out: TrialOutcome, metric: str) -> None:
    if out.pruned:
        say(f"trial {number}: {_shown(chosen)}: pruned after {out.epochs_run} epoch(s)")
    elif not math.isfinite(out.value):  # Optuna fails such a trial and goes on
        say(f"trial {number}: {_shown(chosen)}: failed, {metric} is {out.value} (epoch {out.best_epoch})")
    else:
        say(f"trial {number}: {_shown(chosen)}: {metric} {out.value:.4f} (epoch {out.best_epoch})")


def _failed(say: Callable[[str], None], number: int, chosen: dict[str, Any], err: BaseException) -> None:
    """The progress line of a trial that raised: its values (the error itself reaches the caller)."""
    say(f"trial {number}: {_shown(chosen)}: failed ({err.__class__.__name__})")


def _record(trial) -> Trial:
    return Trial(
        trial.number,
        trial.state.name,
        trial.value,
        dict(trial.params),
        trial.user_attrs.get("run_id"),
    )


def run(
    params: Params, ws: Workspace, say: Callable[[str], None] = log.info, executor: Executor | None = None
) -> TuneResult:
    """Run (or resume) the recipe search within its budget, and write the best trial's params.

    Call it holding the project lock (pipeline.lock): a trial left RUNNING by a killed search is then
    known to be dead, and is marked failed.

    Args:
        params: The params, `auto` labels and colour resolved (pipeline.autoparams).
        ws: The workspace (writes outputs/tune).
        say: Where progress lines go (one per trial).
        executor: Where trials train when `tune.parallel` > 1 (processes: e.g. a Dask client's executor);
            None: one at a time in this process.

    Returns:
        The study's trials, the best one and its params file.

    Raises:
        ConfigError: the search space is invalid.
        DataError: the data fail validation.
    """
    import mlflow
    import optuna

    from pipeline.lineage import content_hash
    from pipeline.registry import close_orphaned_runs

    check_space(params)
    tune, direction = params.tune, TUNE_METRICS[params.tune.metric]
    folder = ws.out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    name = study_name(params, content_hash(ws.data_root)[0])
    # one line per trial is ours (a failed one's too: _failed, _said); an error ends the search (catch=()) and
    # reaches the caller, so Optuna's own warning of it (with a traceback, also for expected errors such as data
    # failing validation) would only repeat it
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{folder / 'study.db'}"
    storage = _storage(url)
    parallel = tune.parallel > 1 and executor is not None
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction=cast(Literal["minimize", "maximize"], direction),
        # constant_liar (Optuna 5's default): trials still training count as their worst, so parallel
        # trials do not draw the same values
        sampler=optuna.samplers.TPESampler(seed=tune.seed),
        pruner=_make_pruner(tune.prune),
    )
    if study.trials:  # resumed: a sampler seeded as at the start would draw the first trials' values again
        study.sampler = optuna.samplers.TPESampler(seed=tune.seed + len(study.trials))
    notes: list[str] = []
    close_orphaned_runs(params.register_, ws.base, say=notes.append)  # the MLflow run of a killed trial
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)  # its process is gone
        notes.append(f"trial {stale.number} was cut short by a stopped search: marked failed")
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    remaining = None if tune.trials is None else max(tune.trials - done, 0)
    parent = _parent_run(params, ws, name)
    client, cache = mlflow.MlflowClient(), cast(dict[str, tuple], {})
    if done:
        notes.append(f"study {name} resumed: {done} trial(s) already finished")

    def objective(trial) -> float:
        chosen = suggest(trial, tune.space)
        trial_ps = trial_params(params, chosen)
        try:
            out = _train_trial(trial, trial_ps, ws, _data(trial_ps, ws, cache), parent, name)
        except Exception as err:
            _failed(say, trial.number, chosen, err)
            raise
        _said(say, trial.number, chosen, out, tune.metric)
        if out.pruned:
            raise optuna.TrialPruned()
        return out.value

    def job(trial) -> tuple[TrialJob, dict[str, Any]]:
        chosen = suggest(trial, tune.space)
        trial_ps = trial_params(params, chosen)
        return TrialJob(trial_ps, ws, _data(trial_ps, ws, cache), trial._trial_id, name, url, parent), chosen

    def progress(study, frozen) -> None:
        if frozen.state == optuna.trial.TrialState.COMPLETE and study.best_trial.number == frozen.number:
            told = len(study.get_trials(deepcopy=False, states=finished))  # rises in any order trials end
            client.log_metric(parent, f"best_{tune.metric}", frozen.value, step=told)
            client.set_tag(parent, "medpipe.tune.best_trial", str(frozen.number))
            _write_best(folder, study.best_trial, name, tune.metric)  # a search killed later keeps its best so far

    before, status = len(study.trials), "FAILED"
    try:
        timeout = None if tune.minutes is None else tune.minutes * 60
        if remaining != 0 and parallel:
            say(f"training {tune.parallel} trials at a time")
            _in_parallel(
                study, job, cast(Executor, executor), tune.parallel, remaining, timeout, tune.metric, say, progress
            )
        elif remaining != 0:
            study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[progress], catch=())
        status = "FINISHED"
    finally:  # a failed trial (e.g. data that fail validation) ends the search, and the study's run with it
        client.set_terminated(parent, status)
    trials = [_record(t) for t in study.get_trials(deepcopy=False)]
    complete = any(t.state == "COMPLETE" for t in trials)
    best = _record(study.best_trial) if complete else None
    # written again: a resumed study with no trial left, or one killed between a trial and its callback
    best_file = _write_best(folder, study.best_trial, name, tune.metric) if complete else None
    return TuneResult(name, tune.metric, direction, trials, best, best_file, parent, len(study.trials) - before, notes)


def _in_parallel(
    study,
    job: Callable,
    executor: Executor,
    parallel: int,
    remaining: int | None,
    timeout: float | None,
    metric: str,
    say: Callable[[str], None],
    progress: Callable,
) -> None:
    """Ask the study for trials and train `parallel` of them at a time on `executor` (ask and tell).

    Like `study.optimize`: no trial starts after `timeout` seconds, and the first failure starts no more;
    trials already training finish and are told first, then the failure is raised.
    """
    import optuna

    deadline = None if timeout is None else time.monotonic() + timeout
    running: dict[Future, tuple[Any, dict[str, Any]]] = {}
    try:
        _ask_and_tell(study, job, executor, parallel, remaining, deadline, metric, say, progress, running)
    except BaseException:  # e.g. Ctrl-C: the trials still training are told failed, as study.optimize does
        for future, (trial, _) in running.items():
            future.cancel()
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise


def _ask_and_tell(
    study,
    job: Callable,
    executor: Executor,
    parallel: int,
    remaining: int | None,
    deadline: float | None,
    metric: str,
    say: Callable[[str], None],
    progress: Callable,
    running: dict[Future, tuple[Any, dict[str, Any]]],
) -> None:
    """_in_parallel's loop; `running` holds the trials training (future -> trial, chosen values)."""
    import optuna

    started, failure = 0, cast(BaseException | None, None)
    while True:
        while (
            failure is None
            and len(running) < parallel
            and (remaining is None or started < remaining)
            and (deadline is None or time.monotonic() < deadline)
        ):
            trial = study.ask()
            started += 1
            try:
                work, chosen = job(trial)  # the data steps run here, once per set of data params
                running[executor.submit(run_trial, work)] = (trial, chosen)
            except Exception as err:  # noqa: BLE001 (told, then raised once the running trials are in)
                _failed(say, trial.number, dict(trial.params), err)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                failure = err
        if not running:
            break
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            trial, chosen = running.pop(future)
            try:
                out = future.result()
            except Exception as err:  # noqa: BLE001
                _failed(say, trial.number, chosen, err)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                failure = failure or err
                continue
            _said(say, trial.number, chosen, out, metric)
            if out.pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, out.value)
            progress(study, study.get_trials(deepcopy=False)[trial.number])
    if failure is not None:
        raise failure


def _write_best(folder: Path, trial, name: str, metric: str) -> Path:
    """outputs/tune/best_params.yaml: the best trial's values as a params override file."""
    head = f"# medpipe tune: study {name}, trial {trial.number}, {metric} {trial.value:.4f} (validation split)\n"
    path = folder / BEST_FILE
    write_text(path, head + yaml.safe_dump(nested(dict(trial.params)), sort_keys=True))
    return path
