"""The recipe search for real on tiny data: Optuna (SQLite study), MLflow nested runs, Keras training."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from pipeline.config import Params, Range
from pipeline.errors import ConfigError
from tests.helpers import start_process, wait_for, write_params

SPACE = {"train.learning_rate": {"low": 0.0005, "high": 0.005, "log": True}, "train.batch_size": [8, 16]}
# a floor any model clears: whether two epochs on 90 tiny images reach the default 0.6 depends on the recipe drawn
FLOOR = {"floors": {"roc_auc": 0.0}}


def _medpipe(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("medpipe")), *args, "--params", str(project / "params.yaml")]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=project)


def _study(project: Path):
    import optuna

    storage = f"sqlite:///{project}/outputs/tune/study.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _client(project: Path):
    import mlflow

    uri = f"sqlite:///{project}/mlflow/mlflow.db"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_the_space_names_real_tunable_keys_with_valid_values():
    from pipeline.tune import check_space

    check_space(Params())  # the shipped space
    for space, blamed in (
        ({"train.learning_rat": [0.1]}, "tune.space.train.learning_rat: no such params key"),
        ({"train": [1]}, "tune.space.train: is a section"),
        ({"register.model_name": ["a"]}, "tune.space.register.model_name: sections data, register"),
        ({"train.batch_size": [16, 0]}, "tune.space.train.batch_size: 0: "),
        ({"train.schedule": ["cosine", "linear"]}, "tune.space.train.schedule: 'linear': "),
        ({"train.backend": ["tensorflow", "jax"]}, "tune.space.train.backend: the Keras backend is not part"),
    ):
        with pytest.raises(ConfigError, match=blamed.replace(".", r"\.")):
            check_space(Params.model_validate({"tune": {"space": space}}))
    with pytest.raises(ValueError, match="low"):
        Range(low=1, high=1)
    with pytest.raises(ValueError, match="budget"):
        Params.model_validate({"tune": {"trials": None, "minutes": None}})


def test_the_chosen_values_become_overrides_and_a_params_file():
    from pipeline.tune import nested, overrides, trial_params

    chosen = {"train.learning_rate": 0.00123, "train.batch_size": 16, "model.name": "resnet_small"}
    assert overrides(chosen) == {
        "train.learning_rate": "0.00123",
        "train.batch_size": "16",
        "model.name": "resnet_small",
    }
    assert nested(chosen) == {"train": {"learning_rate": 0.00123, "batch_size": 16}, "model": {"name": "resnet_small"}}
    tried = trial_params(Params(), chosen)
    assert (tried.train.learning_rate, tried.train.batch_size, tried.model.name) == (0.00123, 16, "resnet_small")
    assert Params().md5() == Params.model_validate({"tune": {"trials": 3}}).md5()  # the search is no lineage


def test_a_bad_space_is_one_line_and_exit_2_before_any_work(tmp_path, tiny_data):
    shutil.copytree(tiny_data, tmp_path / "data")
    write_params(tmp_path, tune={"space": {"train.batch_size": [16, -1]}})
    done = _medpipe(tmp_path, "tune")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: tune.space.train.batch_size: -1: ")
    assert not (tmp_path / "outputs").exists()
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()


def test_data_that_fail_validation_are_one_line_naming_the_data_once(tmp_path, tiny_data):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    first = next(data.rglob("*.png"))
    first.write_bytes(b"not an image")
    write_params(tmp_path, tune={"trials": 1, "space": SPACE})
    done = _medpipe(tmp_path, "tune")
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {data}: data validation failed")
    assert last.count(str(data)) == 1 + last.count(f"{data}/")  # the root named once (and its report's path)
    assert "trial 0: train.batch_size=" in done.stdout  # the failed trial's values are shown
    assert ": failed (DataError)" in done.stdout + done.stderr
    assert not list((tmp_path / "outputs" / "tune" / "trials").glob("0*"))  # no trial trained


def test_parallel_trials_on_a_scheduler_that_does_not_answer_are_one_line_and_exit_2(tmp_path, tiny_data):
    shutil.copytree(tiny_data, tmp_path / "data")
    write_params(tmp_path, tune={"trials": 2, "space": SPACE}, dask={"address": "tcp://127.0.0.1:1"})
    env = {k: v for k, v in os.environ.items() if k != "MEDPIPE_DASK_ADDRESS"}
    done = _medpipe(tmp_path, "tune", "--parallel", "2", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: dask.address: no Dask scheduler answers at tcp://127.0.0.1:1 (ConnectionRefusedError)"
    )
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "outputs" / "tune" / "study.db").exists()


class Searched(NamedTuple):
    project: Path
    first: subprocess.CompletedProcess
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_data) -> Searched:
    """Two trials, then a resume to three."""
    project = tmp_path_factory.mktemp("tune")
    shutil.copytree(tiny_data, project / "data")
    write_params(project, tune={"trials": 2, "seed": 7, "space": SPACE, "prune": False}, promote=FLOOR)
    first = _medpipe(project, "tune")
    resumed = _medpipe(project, "tune", "--trials", "3")
    return Searched(project, first, resumed)


@pytest.mark.slow
def test_a_search_runs_its_budget_and_resumes(searched):
    assert searched.first.returncode == 0, searched.first.stderr[-3000:]
    assert searched.resumed.returncode == 0, searched.resumed.stderr[-3000:]
    assert "trial 0: " in searched.first.stdout
    assert "trial 1: " in searched.first.stdout
    assert "resumed: 2 trial(s) already finished" in searched.resumed.stdout
    assert "trial 2: " in searched.resumed.stdout
    assert "trial 0: " not in searched.resumed.stdout  # not trained again
    drawn = [t.params for t in _study(searched.project).trials]
    assert drawn[2] not in drawn[:2]  # a resumed sampler does not draw the first trials' values again
    assert "2 new trial(s)" in " ".join(searched.first.stdout.split())
    assert "1 new trial(s)" in " ".join(searched.resumed.stdout.split())
    study = _study(searched.project)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


@pytest.mark.slow
def test_the_best_trial_is_chosen_on_validation_and_written_as_params(searched):
    study = _study(searched.project)
    best = max(study.trials, key=lambda t: t.value)
    written = yaml.safe_load((searched.project / "outputs/tune/best_params.yaml").read_text())
    assert written == {
        "train": {"learning_rate": best.params["train.learning_rate"], "batch_size": best.params["train.batch_size"]}
    }
    for trial in study.trials:  # the value is the kept epoch's validation ROC-AUC
        history = json.loads(
            (searched.project / f"outputs/tune/trials/{trial.number:04d}/train/history.json").read_text()
        )
        assert trial.value in history["val_roc_auc"]
    assert f"--set train.batch_size={best.params['train.batch_size']}" in searched.resumed.stdout


@pytest.mark.slow
def test_each_trial_is_a_nested_mlflow_run_and_no_trial_sees_the_test_split(searched):
    client = _client(searched.project)
    experiment = client.get_experiment_by_name("medpipe").experiment_id
    (parent,) = client.search_runs(
        [experiment], "tags.`medpipe.tune.study` LIKE 'tune-%' AND tags.`medpipe.tune.trial` IS NULL"
    )
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(int(r.data.tags["medpipe.tune.trial"]) for r in children) == [0, 1, 2]
    for run in children:
        assert run.info.status == "FINISHED"
        assert not [k for k in run.data.metrics if k.startswith("test_")]
        assert float(run.data.params["params.train.learning_rate"]) == pytest.approx(
            _study(searched.project).trials[int(run.data.tags["medpipe.tune.trial"])].params["train.learning_rate"]
        )
    best = max(_study(searched.project).trials, key=lambda t: t.value)
    assert parent.data.tags["medpipe.tune.best_trial"] == str(best.number)
    assert parent.data.metrics["best_val_roc_auc"] == pytest.approx(best.value)
    assert parent.info.status == "FINISHED"
    assert not (searched.project / "outputs/evaluate").exists()  # nothing was evaluated on test
    assert not client.search_registered_models()  # nor registered


@pytest.mark.slow
def test_the_same_seed_and_budget_give_the_same_trials(searched, tmp_path, tiny_data):
    shutil.copytree(tiny_data, tmp_path / "data")
    write_params(tmp_path, tune={"trials": 2, "seed": 7, "space": SPACE, "prune": False}, promote=FLOOR)
    again = _medpipe(tmp_path, "tune")
    assert again.returncode == 0, again.stderr[-3000:]
    first, second = _study(searched.project).trials[:2], _study(tmp_path).trials
    assert [t.params for t in second] == [t.params for t in first]
    assert [t.value for t in second] == [t.value for t in first]  # and the same training


@pytest.mark.slow
def test_register_trains_the_best_recipe_through_the_flow_and_its_gate(searched):
    done = _medpipe(searched.project, "tune", "--trials", "3", "--register")  # the budget is spent: no trial
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trial 3" not in done.stdout
    best = max(_study(searched.project).trials, key=lambda t: t.value)
    version = _client(searched.project).get_model_version("medpipe-classifier", "1")
    run = _client(searched.project).get_run(version.run_id)
    assert "mlflow.parentRunId" not in run.data.tags  # a normal run, not a trial
    assert int(run.data.params["params.train.batch_size"]) == best.params["train.batch_size"]
    assert float(run.data.params["params.train.learning_rate"]) == pytest.approx(best.params["train.learning_rate"])
    aliases = _client(searched.project).get_registered_model("medpipe-classifier").aliases
    assert {alias: int(v) for alias, v in aliases.items()} == {"champion": 1}  # through the gate (its floor)
    assert "test_roc_auc" in run.data.metrics  # the test split, once, by this model


@pytest.mark.slow
def test_a_search_killed_inside_a_trial_resumes_and_marks_that_trial_failed(tmp_path, tiny_data):
    shutil.copytree(tiny_data, tmp_path / "data")
    write_params(tmp_path, tune={"trials": 5, "seed": 3, "space": SPACE, "prune": False})
    marker = tmp_path / "fault.pid"
    env = {**os.environ, "MEDPIPE_FAULT_POINT": "train.epoch:3", "MEDPIPE_FAULT_MARKER": str(marker)}
    command = [str(Path(sys.executable).with_name("medpipe")), "tune", "--params", str(tmp_path / "params.yaml")]
    process = start_process(command, env, tmp_path, own_session=False)
    try:
        wait_for(marker.exists, 600, "the second trial's first epoch", process)  # trial 0: two epochs
        os.kill(int(marker.read_text()), signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    resumed = _medpipe(tmp_path, "tune", "--minutes", "0.01")  # a budget in time: the trial under way finishes
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trial 1 was cut short by a stopped search: marked failed" in resumed.stdout
    states = [t.state.name for t in _study(tmp_path).trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]  # one more trial, not the four the trial budget left
    runs = _client(tmp_path).search_runs([_client(tmp_path).get_experiment_by_name("medpipe").experiment_id])
    assert sorted(r.info.status for r in runs if "medpipe.tune.trial" in r.data.tags) == [
        "FINISHED",
        "FINISHED",
        "KILLED",
    ]


class Parallel(NamedTuple):
    project: Path
    workers: list[int]  # the processes the killed search had started
    left: list[int]  # those still alive a minute after it was killed
    resumed: subprocess.CompletedProcess


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def _training(project: Path) -> int:
    """The trial runs training now: MLflow status RUNNING, and tagged with the process that holds them."""
    if not (project / "mlflow" / "mlflow.db").exists():
        return 0
    client = _client(project)
    experiment = client.get_experiment_by_name("medpipe")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return sum(
        r.info.status == "RUNNING" and "medpipe.tune.trial" in r.data.tags and "medpipe.pid" in r.data.tags
        for r in runs
    )


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" in status.read_text()  # a zombie no one has reaped yet is gone too
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def parallel(tmp_path_factory, tiny_data) -> Parallel:
    """A search of two trials at a time, killed (-9) while both train, then resumed, two at a time, to 2."""
    project = tmp_path_factory.mktemp("parallel")
    shutil.copytree(tiny_data, project / "data")
    write_params(project, tune={"trials": 2, "seed": 7, "space": SPACE, "prune": False}, train={"epochs": 2})
    marker = project / "fault.pid"
    env = {**os.environ, "MEDPIPE_FAULT_POINT": "train.epoch", "MEDPIPE_FAULT_MARKER": str(marker)}
    command = [str(Path(sys.executable).with_name("medpipe")), "tune", "--parallel", "2"]
    process = start_process([*command, "--params", str(project / "params.yaml")], env, project, own_session=False)
    workers: list[int] = []
    try:
        wait_for(marker.exists, 600, "a worker's first epoch", process)
        wait_for(lambda: _training(project) == 2, 600, "both trials training", process)  # each paused in epoch 1
        assert int(marker.read_text()) != process.pid  # trials train in worker processes (both wrote it by now)
        workers = _children(process.pid)
        os.kill(process.pid, signal.SIGKILL)  # the search, not its workers
        process.wait(timeout=60)
    finally:
        process.kill()
    for _ in range(60):
        if all(_gone(pid) for pid in workers):
            break
        time.sleep(1)
    left = [pid for pid in workers if not _gone(pid)]
    for pid in left:  # do not leave them paused at the fail point for the rest of the session
        os.kill(pid, signal.SIGKILL)
    return Parallel(project, workers, left, _medpipe(project, "tune", "--parallel", "2"))


@pytest.mark.slow
def test_a_search_killed_while_trials_train_in_parallel_leaves_no_worker_and_resumes(parallel):
    assert len(parallel.workers) >= 2  # a LocalCluster of two worker processes
    assert parallel.left == [], f"processes {parallel.left} outlived their search"
    assert parallel.resumed.returncode == 0, parallel.resumed.stderr[-3000:]
    assert "trial 0 was cut short by a stopped search: marked failed" in parallel.resumed.stdout
    assert "trial 1 was cut short by a stopped search: marked failed" in parallel.resumed.stdout
    states = [t.state.name for t in _study(parallel.project).trials]
    assert states == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]  # the budget counts finished trials
    client = _client(parallel.project)
    runs = client.search_runs([client.get_experiment_by_name("medpipe").experiment_id])
    statuses = sorted(r.info.status for r in runs if "medpipe.tune.trial" in r.data.tags)
    assert statuses == ["FINISHED", "FINISHED", "KILLED", "KILLED"]


@pytest.mark.slow
def test_parallel_trials_train_at_once_on_a_local_dask_cluster(parallel):
    done = parallel.resumed
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training 2 trials at a time" in done.stdout
    assert "2 new trial(s)" in " ".join(done.stdout.split())
    trials = [t for t in _study(parallel.project).trials if t.state.name == "COMPLETE"]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 2  # two trials, not one trained twice
    client = _client(parallel.project)
    runs = client.search_runs([client.get_experiment_by_name("medpipe").experiment_id])
    (parent,) = [r for r in runs if "medpipe.tune.trial" not in r.data.tags]
    children = sorted(
        (r for r in runs if r.data.tags.get("medpipe.tune.state") == "complete"), key=lambda r: r.info.start_time
    )
    assert sorted(r.data.tags["medpipe.tune.trial"] for r in children) == ["2", "3"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {t.user_attrs["run_id"] for t in trials} == {r.info.run_id for r in children}
    assert children[1].info.start_time < children[0].info.end_time  # two trials trained at the same time
    top = max(t.value for t in trials)
    (best,) = [t for t in trials if str(t.number) == parent.data.tags["medpipe.tune.best_trial"]]
    assert best.value == top  # a tie may name either
    assert parent.data.metrics["best_val_roc_auc"] == pytest.approx(top)  # the latest value, in any finishing order
    written = yaml.safe_load((parallel.project / "outputs" / "tune" / "best_params.yaml").read_text())
    assert written["train"]["batch_size"] == best.params["train.batch_size"]
