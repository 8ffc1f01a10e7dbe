"""Training: the input pipeline, schedules, devices, and a resumed run ending where an uninterrupted one does."""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from pipeline import balance, preprocess, validate
from pipeline.config import Params, RegisterParams, TrainParams, Workspace
from pipeline.lineage import weights_sha256
from pipeline.registry import setup_tracking
from pipeline.shards import Shards
from pipeline.train import configure_determinism, configure_devices, learning_rate, new_model, run_step, train_dataset
from tests.helpers import wait_for

TRAIN = {"epochs": 4, "batch_size": 16, "min_epochs": 0, "patience": 10, "schedule": "cosine"}


def _workspace(tmp_path, tiny_data, **sections) -> tuple[Params, Workspace, tuple]:
    """A workspace with validate, preprocess and balance done on the tiny data, and their results
    (train's inputs); MLflow in tmp_path."""
    raw = {
        "preprocess": {"size": 24},
        "train": TRAIN,
        "register": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_root": str(tmp_path / "art")},
        **sections,
    }
    params = Params.model_validate(raw)
    ws = Workspace(base=tmp_path, data_root=tiny_data, out=tmp_path / "out")
    validated = validate.run_step(params, ws)
    assert validated.success
    prepared = preprocess.run_step(params, ws, validated)
    return params, ws, (validated, prepared, balance.run_step(params, ws, prepared))


def _batches(dataset, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(x), np.asarray(y)) for x, y in dataset.take(n)]


def test_each_epoch_is_a_function_of_seed_and_epoch(tmp_path, tiny_data):
    params, ws, (_, prepared, balanced) = _workspace(tmp_path, tiny_data)
    shards = Shards(prepared.folder, "train")
    plan = balance.load_plan(balanced.plan)
    tp, ap = params.train, params.balance.augment
    full, steps = train_dataset(shards, plan, 3, tp, ap)
    batches = _batches(full, 3 * steps)
    assert sum(len(x) for x, _ in batches[:steps]) == len(plan[0])
    first, second = (np.concatenate([y.argmax(1) for _, y in batches[e * steps : (e + 1) * steps]]) for e in (0, 1))
    assert not np.array_equal(first, second)
    assert np.array_equal(np.sort(first), np.sort(second))  # reshuffled
    resumed, _ = train_dataset(shards, plan, 3, tp, ap, start_epoch=1)  # as after a restart at epoch 1
    for (xa, ya), (xb, yb) in zip(batches[steps:], _batches(resumed, 2 * steps)):
        assert np.array_equal(xa, xb)
        assert np.array_equal(ya, yb)
    streamed, _ = train_dataset(shards, plan, 3, tp.model_copy(update={"in_memory_mb": 0}), ap)
    for (xa, _), (xb, _) in zip(batches, _batches(streamed, 3 * steps)):
        assert np.array_equal(xa, xb)  # memory-mapped shards give the very same batches


def test_initial_weights_ignore_other_threads_drawing_from_python_random(tmp_path):
    """Prefect's events client (websockets keepalive pings, every 20 s in its own thread) draws from Python's
    global `random`, which Keras seeds its default initializers from: a ping between the seeding and the
    build made two runs of the same data differ. The build no longer depends on that shared generator."""
    import random

    params = Params.model_validate({"train": TRAIN})
    meta = {"size": 16, "channels": 1, "classes": ["a", "b", "c"], "mean": 0.5, "std": 0.25}

    def initial_weights(draws: int) -> str:
        configure_determinism(params.train.seed, True)
        for _ in range(draws):  # what a keepalive ping in another thread does to the shared state
            random.getrandbits(32)
        return weights_sha256(new_model(params, meta, tmp_path, 5).get_weights())

    assert initial_weights(0) == initial_weights(1) == initial_weights(3)


def test_schedules():
    cosine = learning_rate(TrainParams(schedule="cosine", epochs=10, learning_rate=0.1), steps_per_epoch=5)
    assert float(cosine(0)) == pytest.approx(0.1)
    assert float(cosine(50)) == pytest.approx(0.0, abs=1e-6)
    step = learning_rate(TrainParams(schedule="step", step_epochs=2, step_gamma=0.5, learning_rate=0.1), 5)
    assert [round(float(step(s)), 6) for s in (0, 9, 10, 19, 20)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert learning_rate(TrainParams(), 5) == 1e-3


def test_cpu_gets_the_default_strategy_and_float32():
    import keras
    import tensorflow as tf

    strategy, mixed = configure_devices(TrainParams())
    assert not mixed
    assert keras.mixed_precision.global_policy().name == "float32"
    assert not isinstance(strategy, tf.distribute.MirroredStrategy)


class _Interrupt(Exception):
    pass


def _interrupt_after(epochs: int):
    import keras

    class Kill(keras.callbacks.Callback):  # stands in for Ctrl-C or a lost machine after a checkpoint
        def on_epoch_end(self, epoch: int, logs=None) -> None:
            if epoch + 1 == epochs:
                raise _Interrupt(f"interrupted after epoch {epochs}")

    return Kill()


@pytest.mark.slow
def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, tiny_data):
    import mlflow

    model = {"name": "resnet_small", "dropout": 0.3}  # batch norm, dropout, augmentation, cosine schedule
    params, ws, inputs = _workspace(tmp_path / "a", tiny_data, model=model)
    whole = run_step(params, ws, *inputs)
    history = json.loads((ws.out / "train" / "history.json").read_text())

    params, ws, inputs = _workspace(tmp_path / "b", tiny_data, model=model)
    with pytest.raises(_Interrupt):
        run_step(params, ws, *inputs, callbacks=(_interrupt_after(2),))
    assert json.loads((ws.out / "checkpoint" / "progress.json").read_text())["epoch"] == 2
    resumed = run_step(params, ws, *inputs, resume=True)
    assert resumed.resumed_from == 2
    assert resumed.epochs_run == whole.epochs_run == 4
    assert resumed.weights_sha256 == whole.weights_sha256
    assert json.loads((ws.out / "train" / "history.json").read_text()) == history
    assert not (ws.out / "checkpoint").exists()
    client = mlflow.MlflowClient(tracking_uri=params.register_.tracking_uri)
    run = client.get_run(resumed.run_id)  # one MLflow run, continued, with the whole curve
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_roc_auc")] == [0, 1, 2, 3]


def test_one_plain_line_per_epoch_off_a_terminal():
    from pipeline.train import CURVES, epoch_line

    logs = {k: 0.5 for k in CURVES} | {"lr": 0.001}
    line = epoch_line(2, 20, logs, improved=True)
    assert line.startswith("epoch 3/20: loss 0.500")
    assert line.endswith("lr 0.001 *best")
    assert "\x1b" not in line
    assert "\n" not in line


def test_curve_metrics_log_each_figure_under_its_name_and_in_the_curves_section():
    from pipeline.train import CURVES, curve_metrics

    logged = curve_metrics({k: i / 10 for i, k in enumerate(CURVES)})
    assert logged["train_loss"] == logged["curves/train_loss"] == 0.0
    assert logged["val_roc_auc"] == logged["curves/val_roc_auc"] == 0.4
    names = {n for n in logged if "/" not in n}
    assert set(logged) - names == {f"curves/{n}" for n in names}
    assert len(names) == len(CURVES)


_LOG_INPUT_CHILD = """
import sys, time
from pathlib import Path
import mlflow
from pipeline.config import RegisterParams
from pipeline.registry import setup_tracking
from pipeline.train import log_data_input
from pipeline.validate import ValidationReport

folder, uri, data_root, me = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
experiment = setup_tracking(RegisterParams(tracking_uri=uri, artifact_root=str(folder / "art")), folder)
report = ValidationReport(success=True, checks=[], n_images=6, class_counts={}, report_md=str(folder / "report.md"))
with mlflow.start_run(experiment_id=experiment) as run:
    (folder / f"ready-{me}").write_text(run.info.run_id)
    while not (folder / "go").exists():
        time.sleep(0.0005)
    log_data_input(report, data_root, "0123456789abcdef")
"""


def test_runs_logging_the_same_data_version_at_once_all_record_it(tmp_path):
    """MLflow's log_inputs looks the dataset up, then inserts it: two runs logging a new data version at the same
    moment (parallel tune trials, a schedule beside a manual run) both insert, and the loser's UNIQUE
    constraint failure used to end its training (the CI of 971e964). Real processes, started together."""
    (tmp_path / "splits.csv").write_text("path,label,split\na.png,x,train\nb.png,y,val\nc.png,x,test\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    setup_tracking(RegisterParams(tracking_uri=uri, artifact_root=str(tmp_path / "art")), tmp_path)  # schema once
    n = 6
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _LOG_INPUT_CHILD, str(tmp_path), uri, str(tmp_path / "data"), str(i)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    wait_for(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(n)), 300, "runs started", *children)
    (tmp_path / "go").touch()
    errors = [child.communicate(timeout=300)[1] for child in children]
    assert [child.returncode for child in children] == [0] * n, "\n".join(errors)[-3000:]
    client = mlflow.MlflowClient(uri)
    for i in range(n):
        inputs = client.get_run((tmp_path / f"ready-{i}").read_text()).inputs.dataset_inputs
        assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [("data", "01234567")]
