"""Self-supervised pre-training (params `pretrain`): the NT-Xent loss and the k-NN probe by hand, the seeded
two-view batches, encoder files (no pickle, checked against the model they load into), and real runs that
keep the encoder, reuse it through `model.weights`, and resume after a `kill -9` to the very same weights."""

import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import ModelParams, Params, PretrainParams
from pipeline.errors import ConfigError
from pipeline.model import build_model, encoder_of, load_encoder, load_model
from pipeline.pretrain import (
    knn_accuracy,
    pretrain_feed,
    pretrain_words,
    registered,
    steps_per_epoch,
)
from pipeline.shards import ArrayShards, JoinedShards
from pipeline.weights import read_encoder, save_encoder
from tests.helpers import start_process, stderr_tail, wait_for, write_params
from tests.pipeline.test_semi import _pool_data
from tests.pipeline.test_train import TRAIN, _workspace

PRETRAIN = {"epochs": 2, "batch_size": 8}


def _nt_xent(z: np.ndarray, temperature: float) -> float:
    """SimCLR's loss, written out row by row."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, losses = len(z), []
    for i in range(n):
        partner = (i + n // 2) % n
        logits = np.array([z[i] @ z[j] / temperature for j in range(n) if j != i])
        others = [j for j in range(n) if j != i]
        losses.append(-(logits[others.index(partner)] - np.log(np.exp(logits).sum())))
    return float(np.mean(losses))


def test_the_nt_xent_loss_is_simclr_s_written_out():
    z = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    loss = registered()(temperature=0.5)
    assert float(loss(np.zeros((6, 1)), z)) == pytest.approx(_nt_xent(z, 0.5), rel=1e-5)
    paired = np.concatenate([z[:3], z[:3] + 0.01])  # each view next to its partner: a low loss
    assert float(loss(np.zeros((6, 1)), paired)) < float(loss(np.zeros((6, 1)), z))


def test_the_knn_probe_votes_with_the_nearest_labelled_features():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    assert knn_accuracy(train, labels, np.array([[1, 0.05], [0.05, 1]]), np.array([0, 1]), k=2) == 1.0
    assert knn_accuracy(train, labels, np.array([[1, 1]]), np.array([0]), k=4) == 1.0  # a tie: the lower class
    assert np.isnan(knn_accuracy(train[:0], labels[:0], train, labels))


def _splits():
    rng = np.random.default_rng(1)
    train = ArrayShards(rng.integers(0, 255, (10, 16, 16, 1), dtype=np.uint8), np.zeros(10, dtype=np.int64))
    pool = ArrayShards(rng.integers(0, 255, (7, 16, 16, 1), dtype=np.uint8), np.full(7, -1, dtype=np.int64))
    return JoinedShards(train, pool, np.arange(7), np.full(7, -1))  # the train split, then the pool


def test_pretraining_batches_are_two_views_of_each_image_seeded_and_resumable():
    splits = _splits()
    everything = np.concatenate([s.read() for s in (splits.train, splits.pool)])
    plain = PretrainParams(
        epochs=2,
        batch_size=4,
        augment={"flip": False, "rotation": 0, "shift": 0, "zoom": 0, "brightness": 0, "contrast": 0, "noise": 0},
    )
    feed, steps = pretrain_feed(splits, plain, seed=3, in_memory_mb=1)
    assert steps == steps_per_epoch(17, 4) == 5 and len(feed) == 10
    seen = []
    for b in range(steps):  # one epoch: every image, in full batches (the last wraps to the start)
        x, y = feed[b]
        x = np.asarray(x)
        assert x.shape == (8, 16, 16, 1) and y.shape == (8, 1)
        np.testing.assert_array_equal(x[:4], x[4:])  # without augmentation the two views are the same images
        seen += [int(np.flatnonzero((everything == np.round(v * 255)).all(axis=(1, 2, 3)))[0]) for v in x[:4]]
    assert sorted(set(seen)) == list(range(17))
    strong = PretrainParams(epochs=2, batch_size=4)
    feed, _ = pretrain_feed(splits, strong, seed=3, in_memory_mb=0)  # streamed from the shards
    x = np.asarray(feed[6][0])
    assert not np.allclose(x[:4], x[4:])  # two different views
    np.testing.assert_array_equal(x, np.asarray(pretrain_feed(splits, strong, seed=3, in_memory_mb=1)[0][6][0]))
    resumed, _ = pretrain_feed(splits, strong, seed=3, in_memory_mb=1, start_epoch=1)
    np.testing.assert_array_equal(np.asarray(resumed[1][0]), x)  # epoch 1, batch 1 either way
    assert not np.array_equal(np.asarray(pretrain_feed(splits, strong, seed=4, in_memory_mb=1)[0][6][0]), x)


def test_an_encoder_file_loads_into_the_model_it_fits_only(tmp_path):
    model = build_model(ModelParams(), (16, 16, 1), 3)
    path = tmp_path / "encoder.npz"
    save_encoder(encoder_of(model), path, {"architecture": "seed_cnn", "input_shape": [16, 16, 1], "epochs": 2})
    about, weights = read_encoder(path)
    assert about["epochs"] == 2 and len(weights) == len(encoder_of(model).get_weights())
    other = build_model(ModelParams(), (16, 16, 1), 5)  # another head: the encoder still fits
    load_encoder(other, path)
    for a, b in zip(encoder_of(other).get_weights(), encoder_of(model).get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match=r"encoder made for seed_cnn \[16, 16, 1\], not for seed_cnn \[24, 24, 1\]"):
        load_encoder(build_model(ModelParams(), (24, 24, 1), 3), path)
    with pytest.raises(ConfigError, match="encoder made for seed_cnn"):
        load_encoder(build_model(ModelParams(name="resnet_small"), (16, 16, 1), 3), path)


@pytest.mark.parametrize("name", ["seed_cnn", "resnet_small", "mobilenet_v3_small"])
def test_model_weights_names_an_encoder_file_made_by_the_same_architecture(tmp_path, name):
    shape = (32, 32, 3) if name == "mobilenet_v3_small" else (16, 16, 1)
    model = build_model(ModelParams(name=name), shape, 3)
    save_encoder(encoder_of(model), tmp_path / "enc.npz", {"architecture": name, "input_shape": list(shape)})
    again = build_model(ModelParams(name=name, weights=Path("enc.npz")), shape, 2, base=tmp_path)
    for a, b in zip(encoder_of(again).get_weights(), encoder_of(model).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    if name != "mobilenet_v3_small":
        (tmp_path / "backbone.h5").write_bytes(b"")
        with pytest.raises(ConfigError, match=rf"backbone.h5: {name} takes only a medpipe encoder file \(.npz\)"):
            build_model(ModelParams(name=name, weights=Path("backbone.h5")), shape, 2, base=tmp_path)


def test_pretraining_off_leaves_the_params_hash_as_it_was():
    before = "9402475f2a539a46723f2ac9166102f4"  # Params().md5() before the section existed (6a96f89)
    assert Params().md5() == before
    assert Params.model_validate({"pretrain": {"epochs": 0, "temperature": 0.5}}).md5() == before
    on = Params.model_validate({"pretrain": {"epochs": 3}})
    assert on.md5() != Params().md5()
    assert Params.model_validate({"pretrain": {"epochs": 3, "temperature": 0.5}}).md5() != on.md5()


def test_the_pretrain_tag_says_what_the_encoder_learnt():
    about = {"images": 26, "epochs": 2, "temperature": 0.2, "loss": [3.4634, 3.1], "knn": {"before": 0.4, "after": 0.5}}
    assert pretrain_words(about) == (
        "simclr: 26 images, 2 epochs, temperature 0.2, loss 3.463 -> 3.100; k-NN val accuracy 0.400 -> 0.500"
    )


@pytest.mark.slow
def test_pretraining_keeps_an_encoder_the_run_starts_from_and_a_later_run_reuses(tmp_path, tiny_data):
    import mlflow

    from pipeline.train import run_step

    root, _ = _pool_data(tmp_path, tiny_data)
    still = {**TRAIN, "learning_rate": 1e-9}  # supervised training that leaves the weights where they start
    params, ws, inputs = _workspace(tmp_path / "a", root, pretrain=PRETRAIN, train=still)
    result = run_step(params, ws, *inputs)
    about, encoder = read_encoder(ws.out / "train" / "encoder.npz")
    trained = encoder_of(load_model(ws.base / result.model_path)).get_weights()
    for a, b in zip(trained, encoder, strict=True):  # the classifier started from the pre-trained encoder
        np.testing.assert_allclose(a, b, atol=1e-6)
    n_images = inputs[1].split_sizes["train"] + inputs[1].split_sizes["pool"]
    assert inputs[1].split_sizes["pool"] == inputs[0].pool["usable"]  # the pool is read with pre-training on
    assert (about["architecture"], about["images"], about["epochs"], len(about["loss"])) == ("seed_cnn", n_images, 2, 2)
    assert set(about["knn"]) == {"before", "after"}
    client = mlflow.MlflowClient(tracking_uri=params.register_.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["medpipe.pretrain"] == pretrain_words(about)
    assert [m.step for m in client.get_metric_history(result.run_id, "pretrain_loss")] == [0, 1]
    assert [m.step for m in client.get_metric_history(result.run_id, "val_roc_auc")] == list(range(TRAIN["epochs"]))
    logged = Path(client.download_artifacts(result.run_id, "encoder/encoder.npz", str(tmp_path / "dl")))
    assert logged.read_bytes() == (ws.out / "train" / "encoder.npz").read_bytes()

    reuse = tmp_path / "b" / "encoder.npz"
    reuse.parent.mkdir()
    reuse.write_bytes(logged.read_bytes())
    params, ws, inputs = _workspace(tmp_path / "b", root, model={"weights": "encoder.npz"})
    again = run_step(params, ws, *inputs)
    tags = mlflow.MlflowClient(tracking_uri=params.register_.tracking_uri).get_run(again.run_id).data.tags
    sha = hashlib.sha256(reuse.read_bytes()).hexdigest()
    assert tags["medpipe.init_weights"] == f"encoder.npz sha256:{sha} (pre-trained in run {result.run_id})"
    assert "medpipe.pretrain" not in tags


@pytest.mark.slow
def test_pretraining_killed_in_a_real_process_resumes_to_the_uninterrupted_weights(tmp_path, tiny_data):
    root, _ = _pool_data(tmp_path, tiny_data)
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(root, project / "data")
    pretrain = {"epochs": 3, "batch_size": 8}
    write_params(project, model={"name": "resnet_small"}, pretrain=pretrain, preprocess={"size": 24})  # dropout
    medpipe = str(Path(sys.executable).with_name("medpipe"))
    for step in ("validate", "preprocess", "balance"):
        done = start_process([medpipe, "stage", step], dict(os.environ), project, own_session=False)
        assert done.wait(timeout=600) == 0, stderr_tail(done)
    _kill_at(medpipe, project, "train.pretrain_epoch:2", "stage", "train")
    folder = project / "outputs" / "checkpoint" / "pretrain"
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["epoch"] == 2 and progress["run_id"]
    _kill_at(medpipe, project, "train.pretrain_epoch", "stage", "train", "--resume")  # after its last epoch
    assert json.loads((folder / "progress.json").read_text())["epoch"] == 3
    assert not (folder / "encoder.npz").exists()
    from pipeline.config import Workspace, load_params
    from pipeline.train import has_checkpoint

    loaded = load_params(project / "params.yaml")
    assert has_checkpoint(loaded, Workspace.create(loaded, project / "params.yaml"))  # `medpipe run --resume` resumes
    resumed = start_process([medpipe, "stage", "train", "--resume"], dict(os.environ), project, own_session=False)
    assert resumed.wait(timeout=600) == 0, stderr_tail(resumed)
    run = json.loads((project / "outputs" / "train" / "run.json").read_text())
    assert run["run_id"] == progress["run_id"]  # the killed run, continued
    assert not (project / "outputs" / "checkpoint").exists()

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["register"] = {"tracking_uri": f"sqlite:///{tmp_path}/whole.db", "artifact_root": str(tmp_path / "art")}
    whole = _whole_run(tmp_path / "whole", root, params)
    assert whole == run["weights_sha256"]


def _kill_at(medpipe: str, project: Path, point: str, *args: str) -> None:
    """Run `medpipe *args` in project until it stands at the fail point, and kill -9 it there."""
    marker = project / f"fault-{point}.pid"
    env = {**os.environ, "MEDPIPE_FAULT_POINT": point, "MEDPIPE_FAULT_MARKER": str(marker)}
    process = start_process([medpipe, *args], env, project, own_session=False)
    try:
        wait_for(marker.exists, 600, point, process)
        os.kill(int(marker.read_text()), signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()


def _whole_run(folder: Path, root: Path, raw: dict) -> str:
    """The same steps in this process, uninterrupted; the weights' sha256."""
    from pipeline import autoparams, balance, preprocess, validate
    from pipeline.config import Workspace
    from pipeline.train import run_step

    params = autoparams.resolve(Params.model_validate(raw), root).params  # colour `auto`, as `medpipe stage` does
    ws = Workspace(base=folder, data_root=root, out=folder / "out")
    validated = validate.run_step(params, ws)
    prepared = preprocess.run_step(params, ws, validated)
    return run_step(params, ws, validated, prepared, balance.run_step(params, ws, prepared)).weights_sha256


def test_a_student_starts_from_this_run_s_encoder_only(tmp_path):
    from pipeline.config import Workspace
    from pipeline.train import Progress, pretrained_start

    teacher = build_model(ModelParams(), (16, 16, 1), 2)
    folder = tmp_path / "out" / "checkpoint" / "pretrain"
    folder.mkdir(parents=True)
    about = {"architecture": "seed_cnn", "input_shape": [16, 16, 1], "run_id": "r1"}
    save_encoder(encoder_of(teacher), folder / "encoder.npz", about)
    ws = Workspace(base=tmp_path, data_root=tmp_path, out=tmp_path / "out")
    on = Params.model_validate({"pretrain": {"epochs": 2}})

    def same(model) -> bool:
        return all(np.array_equal(a, b) for a, b in zip(encoder_of(model).get_weights(), teacher.get_weights()))

    assert same(pretrained_start(build_model(ModelParams(), (16, 16, 1), 2), ws, on, Progress("k", "r1")))
    assert not same(pretrained_start(build_model(ModelParams(), (16, 16, 1), 2), ws, on, Progress("k", "r2")))
    assert not same(pretrained_start(build_model(ModelParams(), (16, 16, 1), 2), ws, Params(), Progress("k", "r1")))
