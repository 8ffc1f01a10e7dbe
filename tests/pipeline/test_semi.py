"""Learning from unlabelled images: the pool's validation, its shards, and pseudo-labelling runs that resume
to the very same weights."""

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline import balance, preprocess, validate
from pipeline.config import Params, SemiParams, Workspace
from pipeline.semi import POOL, class_share, confident, pick, picked_by, round_summary, student_plan
from pipeline.shards import ArrayShards, JoinedShards, Shards
from pipeline.train import run_step, semi_tag

TRAIN = {"epochs": 3, "batch_size": 16, "min_epochs": 0, "patience": 10}
SEMI = {"method": "pseudo_label", "threshold": 0.34, "rounds": 1}  # tiny models are unsure: 3 classes, > 1/3


def test_confident_keeps_the_rows_at_or_above_the_threshold():
    proba = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4]])
    picked = confident(proba, 0.8)
    assert picked.positions.tolist() == [0, 2]
    assert picked.labels.tolist() == [0, 1]
    assert picked.confidence.tolist() == [0.9, 0.8]
    assert len(confident(np.zeros((0, 3)), 0.5).positions) == 0
    summary = round_summary(picked, ["a", "b"], 4, SemiParams(threshold=0.8), 1)
    assert summary == {
        "round": 1,
        "criterion": "threshold",
        "threshold": 0.8,
        "pool": 4,
        "picked": 2,
        "per_class": {"a": 1, "b": 1},
        "mean_confidence": 0.85,
    }


def test_class_share_takes_the_most_confident_share_of_each_class_the_teacher_assigns():
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.8, 0.2], [0.55, 0.45], [0.1, 0.9]])
    # class 0 is the top class of rows 0, 1, 4, 5; class 1 of rows 2, 3, 6
    assert class_share(proba, 0.2).positions.tolist() == [0, 6]  # share * count rounded up: 1 of each
    half = class_share(proba, 0.5)
    assert half.positions.tolist() == [0, 2, 4, 6] and half.labels.tolist() == [0, 1, 0, 1]
    assert class_share(proba, 1.0).positions.tolist() == list(range(7))
    tied = class_share(np.array([[0.7, 0.3], [0.7, 0.3], [0.7, 0.3]]), 0.5)
    assert tied.positions.tolist() == [0, 1]  # equal confidence: the earlier rows
    assert len(class_share(np.zeros((0, 3)), 0.5).positions) == 0
    # a weak teacher sure only of its easy class: the threshold picks that class alone, class_share both
    weak = np.array([[0.99, 0.01]] * 6 + [[0.4, 0.6]] * 4)
    assert set(confident(weak, 0.95).labels.tolist()) == {0}
    by_round = [pick(weak, SemiParams(criterion="class_share", share=0.3), k) for k in (1, 2, 4)]
    assert [np.bincount(p.labels).tolist() for p in by_round] == [[2, 2], [4, 3], [6, 4]]  # share * round, <= all
    summary = round_summary(by_round[1], ["a", "b"], 10, SemiParams(criterion="class_share", share=0.3), 2)
    assert summary["criterion"] == "class_share" and summary["share"] == 0.6 and "threshold" not in summary
    assert picked_by(summary) == "as the most confident 60 % of each class"
    first = round_summary(by_round[0], ["a", "b"], 10, SemiParams(criterion="class_share", share=0.3), 1)
    assert semi_tag([first, summary]) == (
        "pseudo_label: 4 of 10 pool images as the most confident 30 % of each class (round 1); 7 at 60 % (round 2)"
    )


def test_joined_shards_read_the_train_split_then_the_picked_pool_images():
    train = ArrayShards(np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1), np.array([0, 1, 0]))
    pool = ArrayShards(np.arange(10, 15, dtype=np.uint8).reshape(5, 1, 1, 1), np.full(5, -1))
    joined = JoinedShards(train, pool, np.array([1, 4]), np.array([1, 1]))
    assert len(joined) == 5 and joined.nbytes == 5
    assert joined.labels.tolist() == [0, 1, 0, 1, 1]
    assert joined.read().ravel().tolist() == [0, 1, 2, 11, 14]
    assert joined.take([4, 0, 3, 3]).ravel().tolist() == [14, 0, 11, 11]
    index, flags = student_plan((np.array([0, 1, 1, 2]), np.array([False, False, True, False])), 3, 2)
    assert index.tolist() == [0, 1, 1, 2, 3, 4]
    assert flags.tolist() == [False, False, True, False, True, True]  # pool images always augmented


def test_semi_off_leaves_the_params_hash_as_it_was():
    off = Params.model_validate({"semi": {"method": "none", "threshold": 0.5}})
    assert off.md5() == Params().md5()
    assert Params.model_validate({"semi": {"method": "pseudo_label"}}).md5() != Params().md5()


def _pool_data(tmp_path, tiny_data):
    """tiny_data with six normal patients' images unlabelled, and hostile pool rows: a corrupt file, a blank
    image, an image of a test patient, an exact and a near copy of a test image; returns (root, the test
    image copied)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    manifest = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    unlabelled = sorted(manifest.loc[manifest["label"] == "normal", "patient_id"].unique())[:6]
    manifest.loc[manifest["patient_id"].isin(unlabelled), "label"] = ""
    manifest[manifest["label"] != ""].to_csv(root / "manifest.csv", index=False, lineterminator="\n")
    params = Params.model_validate({"preprocess": {"size": 24}})
    plain = validate.run_step(params, Workspace(base=tmp_path, data_root=root, out=tmp_path / "plain"))
    table = plain.split_table()  # the labelled images alone
    test = table[table["split"] == "test"].iloc[0]
    extra = root / "extra"
    extra.mkdir()
    (extra / "corrupt.png").write_bytes(b"not an image")
    cv2.imwrite(str(extra / "blank.png"), np.full((32, 32), 128, np.uint8))
    shutil.copy(root / test["path"], extra / "exact.png")
    image = cv2.imread(str(root / test["path"]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(extra / "near.png"), cv2.add(image, 6))
    shutil.copy(root / manifest.loc[manifest["label"] == "", "path"].iloc[0], extra / "patient.png")
    rows = [
        ("extra/corrupt.png", "", "X1"),
        ("extra/blank.png", "", "X2"),
        ("extra/exact.png", "", "X3"),
        ("extra/near.png", "", "X4"),
        ("extra/patient.png", "", test["patient_id"]),
    ]
    manifest = pd.concat([manifest, pd.DataFrame(rows, columns=["path", "label", "patient_id"])], ignore_index=True)
    manifest.to_csv(root / "manifest.csv", index=False, lineterminator="\n")
    return root, plain


def test_validation_checks_the_pool_and_keeps_it_out_of_the_splits(tmp_path, tiny_data):
    root, plain = _pool_data(tmp_path, tiny_data)
    params = Params.model_validate({"preprocess": {"size": 24}})
    report = validate.run_step(params, Workspace(base=tmp_path, data_root=root, out=tmp_path / "out"))
    assert report.success
    pool = pd.read_csv(report.pool_csv, dtype=str, keep_default_na=False)
    reasons = dict(zip(pool["path"], pool["excluded"]))
    assert reasons["extra/corrupt.png"].startswith("unreadable: extra/corrupt.png")
    assert reasons["extra/blank.png"] == "blank"
    assert reasons["extra/exact.png"] == "copy of a val/test image"
    assert reasons["extra/near.png"] == "near copy of a val/test image"
    assert reasons["extra/patient.png"] == "patient in val/test"
    usable = [p for p, r in reasons.items() if not r]
    assert usable and all(p.startswith("images/normal/") for p in usable)
    assert report.n_unlabelled == len(pool) == len(usable) + 5
    assert report.pool == {
        "n": len(pool),
        "usable": len(usable),
        "excluded": {
            "blank": 1,
            "copy of a val/test image": 1,
            "near copy of a val/test image": 1,
            "patient in val/test": 1,
            "unreadable": 1,
        },
    }
    assert not set(pool["path"]) & set(report.split_table()["path"])  # in no split
    assert f"{len(usable)} usable by `semi` training" in (report.folder / "report.md").read_text()
    # the labelled images' split is the one they get without any unlabelled rows
    assert report.split_table().equals(plain.split_table())


def test_preprocess_writes_the_usable_pool_only_with_semi_on(tmp_path, tiny_data):
    root, _ = _pool_data(tmp_path, tiny_data)
    off = Params.model_validate({"preprocess": {"size": 24}})
    ws = Workspace(base=tmp_path, data_root=root, out=tmp_path / "out")
    validated = validate.run_step(off, ws)
    assert POOL not in preprocess.run_step(off, ws, validated).split_sizes
    on = Params.model_validate({"preprocess": {"size": 24}, "semi": SEMI})
    prepared = preprocess.run_step(on, ws, validated)
    assert not prepared.cached  # the pool is part of the shards' key
    usable = validated.pool["usable"]
    assert prepared.split_sizes[POOL] == usable
    pool = Shards(prepared.folder, POOL)
    assert pool.read().shape == (usable, 24, 24, 1) and set(pool.labels.tolist()) == {-1}


class _Interrupt(Exception):
    pass


def _interrupt_at(total: int):
    """A callback that stops the process's training after `total` epochs in all (teacher and students)."""
    import keras

    seen = []

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs=None) -> None:
            seen.append(epoch)
            if len(seen) == total:
                raise _Interrupt(f"interrupted after {total} epochs")

    return Kill()


def _semi_workspace(tmp_path, root, **semi):
    params = Params.model_validate(
        {
            "preprocess": {"size": 24},
            "train": TRAIN,
            "semi": {**SEMI, **semi},
            "register": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_root": str(tmp_path / "art")},
        }
    )
    ws = Workspace(base=tmp_path, data_root=root, out=tmp_path / "out")
    validated = validate.run_step(params, ws)
    prepared = preprocess.run_step(params, ws, validated)
    return params, ws, (validated, prepared, balance.run_step(params, ws, prepared))


@pytest.mark.slow
def test_pseudo_labelling_learns_from_the_pool_and_resumes_to_the_same_weights(tmp_path, tiny_data):
    import mlflow

    root, _ = _pool_data(tmp_path, tiny_data)
    params, ws, inputs = _semi_workspace(tmp_path / "a", root)
    whole = run_step(params, ws, *inputs)
    semi = json.loads((ws.out / "train" / "semi.json").read_text())
    assert semi["method"] == "pseudo_label" and len(semi["rounds"]) == 1
    picked = semi["rounds"][0]
    assert picked["pool"] == inputs[0].pool["usable"] and 0 < picked["picked"] <= picked["pool"]
    client = mlflow.MlflowClient(tracking_uri=params.register_.tracking_uri)
    run = client.get_run(whole.run_id)
    assert run.data.tags["medpipe.semi"].startswith(f"pseudo_label: {picked['picked']} of {picked['pool']}")
    teacher = client.get_metric_history(whole.run_id, "round0/val_roc_auc")
    assert [m.step for m in teacher] == [0, 1, 2]  # the teacher's curve in its own section
    assert [m.step for m in client.get_metric_history(whole.run_id, "val_roc_auc")] == [0, 1, 2]  # the student's

    params, ws, inputs = _semi_workspace(tmp_path / "b", root)
    with pytest.raises(_Interrupt):  # in the student's second epoch
        run_step(params, ws, *inputs, callbacks=(_interrupt_at(5),))
    assert json.loads((ws.out / "checkpoint" / "round0" / "progress.json").read_text())["epoch"] == 3
    assert json.loads((ws.out / "checkpoint" / "round1" / "progress.json").read_text())["epoch"] == 2
    resumed = run_step(params, ws, *inputs, resume=True)
    assert resumed.weights_sha256 == whole.weights_sha256
    assert json.loads((ws.out / "train" / "semi.json").read_text()) == semi
    assert not (ws.out / "checkpoint").exists()


@pytest.mark.slow
def test_without_a_usable_pool_or_a_sure_pick_the_teacher_is_the_model(tmp_path, tiny_data):
    import mlflow

    root, _ = _pool_data(tmp_path, tiny_data)
    params, ws, inputs = _semi_workspace(tmp_path / "sure", root, threshold=1.0)  # no pool image is that sure
    kept = run_step(params, ws, *inputs)
    semi = json.loads((ws.out / "train" / "semi.json").read_text())["rounds"]
    assert [r["picked"] for r in semi] == [0]
    client = mlflow.MlflowClient(tracking_uri=params.register_.tracking_uri)
    assert client.get_run(kept.run_id).data.tags["medpipe.semi"].endswith("; none picked, the model before kept")
    assert [m.step for m in client.get_metric_history(kept.run_id, "val_roc_auc")] == [0, 1, 2]  # the teacher's
    params, ws, inputs = _semi_workspace(tmp_path / "off", root, method="none")
    assert run_step(params, ws, *inputs).weights_sha256 == kept.weights_sha256  # the same model as without semi

    params, ws, inputs = _semi_workspace(tmp_path / "none", tiny_data)  # no unlabelled image at all
    assert POOL not in inputs[1].split_sizes
    alone = run_step(params, ws, *inputs)
    assert json.loads((ws.out / "train" / "semi.json").read_text())["rounds"] == []
    client = mlflow.MlflowClient(tracking_uri=params.register_.tracking_uri)
    assert client.get_run(alone.run_id).data.tags["medpipe.semi"] == "pseudo_label: no usable unlabelled images"
    assert [m.step for m in client.get_metric_history(alone.run_id, "val_roc_auc")] == [0, 1, 2]


@pytest.mark.slow
def test_class_share_rounds_pick_from_each_class_and_more_each_round(tmp_path, tiny_data):
    import mlflow

    root, _ = _pool_data(tmp_path, tiny_data)
    params, ws, inputs = _semi_workspace(tmp_path / "share", root, criterion="class_share", share=0.3, rounds=2)
    result = run_step(params, ws, *inputs)
    rounds = json.loads((ws.out / "train" / "semi.json").read_text())["rounds"]
    assert [(r["criterion"], r["share"]) for r in rounds] == [("class_share", 0.3), ("class_share", 0.6)]
    assert 0 < rounds[0]["picked"] < rounds[1]["picked"] <= rounds[1]["pool"] == inputs[0].pool["usable"]
    assert all(sum(r["per_class"].values()) == r["picked"] for r in rounds)
    client = mlflow.MlflowClient(tracking_uri=params.register_.tracking_uri)
    tag = client.get_run(result.run_id).data.tags["medpipe.semi"]
    assert tag == semi_tag(rounds) and "as the most confident 30 % of each class (round 1)" in tag
    assert [m.step for m in client.get_metric_history(result.run_id, "round1/val_roc_auc")] == [0, 1, 2]


CONSISTENCY = {"method": "consistency", "threshold": 0.34, "rounds": 1, "mu": 1}


def test_consistency_fields_change_only_a_consistency_recipe_s_hash():
    pseudo = Params.model_validate({"semi": {"method": "pseudo_label"}})
    assert Params.model_validate({"semi": {"method": "pseudo_label", "mu": 5, "weight": 0.5}}).md5() == pseudo.md5()
    consistency = Params.model_validate({"semi": {"method": "consistency"}})
    assert consistency.md5() not in (pseudo.md5(), Params().md5())
    assert Params.model_validate({"semi": {"method": "consistency", "mu": 5}}).md5() != consistency.md5()


def test_the_consistency_loss_is_labelled_cross_entropy_plus_the_sure_pool_images_strong_views_term():
    from keras import ops

    from pipeline.consistency import registered

    loss_class, accuracy_class = registered()
    y_true = np.array([[1, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0]], np.float32)
    y_pred = np.array(
        [
            [0.8, 0.2],  # labelled: right
            [0.6, 0.4],  # labelled: wrong
            [0.9, 0.1],  # weak view, sure (>= 0.7) of class 0
            [0.55, 0.45],  # weak view, unsure: its strong view adds nothing
            [0.3, 0.7],  # strong view of the sure one, against class 0
            [0.1, 0.9],
        ],
        np.float32,
    )
    value = float(ops.convert_to_numpy(loss_class(2, 2, 0.7, 0.5)(y_true, y_pred)))
    supervised = -(np.log(0.8) + np.log(0.4)) / 2
    assert value == pytest.approx(supervised + 0.5 * (-np.log(0.3) / 2), rel=1e-5)
    weighted = float(ops.convert_to_numpy(loss_class(2, 2, 0.7, 0.0, [1.0, 3.0])(y_true, y_pred)))
    assert weighted == pytest.approx(-(np.log(0.8) + 3 * np.log(0.4)) / 2, rel=1e-5)
    # at 0.8 the first weak view (0.9) is sure; aligned (the batch's mean (0.725, 0.275) divided out) it is
    # (0.773, 0.227): unsure, and the pool term is gone
    sure = float(ops.convert_to_numpy(loss_class(2, 2, 0.8, 0.5)(y_true, y_pred)))
    aligned = float(ops.convert_to_numpy(loss_class(2, 2, 0.8, 0.5, align=True)(y_true, y_pred)))
    assert sure == pytest.approx(value, rel=1e-5) and aligned == pytest.approx(supervised, rel=1e-5)
    accuracy = accuracy_class(2)
    accuracy.update_state(y_true, y_pred)
    assert float(accuracy.result()) == pytest.approx(0.5)  # the labelled rows only


def test_consistency_batches_hold_supervised_training_s_labelled_rows_then_two_views_of_pool_images():
    from keras import ops

    from pipeline.config import AugmentParams, TrainParams
    from pipeline.consistency import consistency_feed, labelled_order, pool_order, wrapped
    from pipeline.feed import train_feed

    rng = np.random.default_rng(0)
    train = ArrayShards(rng.integers(0, 255, (10, 12, 12, 1), dtype=np.uint8), np.arange(10) % 2)
    pool = ArrayShards(rng.integers(0, 255, (30, 12, 12, 1), dtype=np.uint8), np.full(30, -1))
    plan = (np.arange(10), np.arange(10) % 3 == 0)
    training = TrainParams(epochs=2, batch_size=4, seed=3)
    weak, semi = AugmentParams(), SemiParams(method="consistency", mu=2)
    feed, steps = consistency_feed(train, plan, pool, 2, training, weak, semi)
    supervised, supervised_steps = train_feed(train, plan, 2, training, weak)
    assert supervised_steps == 3 and steps == 4 and len(feed) == 8  # an epoch: one pass over the 30 pool images
    for i in (0, 1, 5):  # whole supervised batches of each epoch
        x, y = feed[i]
        x = ops.convert_to_numpy(x)
        assert x.shape == (4 + 2 * 8, 12, 12, 1) and y.shape == (20, 2)
        sx, sy = supervised[i - 1 if i > steps else i]  # its batch of the same epoch
        np.testing.assert_allclose(x[:4], ops.convert_to_numpy(sx), atol=1e-6)
        np.testing.assert_array_equal(y[:4], sy)
        assert not y[4:].any()
        assert not np.allclose(x[4:12], x[12:])  # weak and strong views differ
    last_x, _ = feed[3]  # the epoch's last batch wraps around: still full
    assert ops.convert_to_numpy(last_x).shape[0] == 20
    again, _ = consistency_feed(train, plan, pool, 2, training, weak, semi, start_epoch=1)
    np.testing.assert_array_equal(ops.convert_to_numpy(again[1][0]), ops.convert_to_numpy(feed[5][0]))
    order = pool_order(3, 0, 30)
    assert sorted(np.concatenate([wrapped(order, b, 8) for b in range(4)])[:30]) == list(range(30))
    labelled = labelled_order(3, 0, 10, 16)  # two passes over the plan: each a permutation
    assert sorted(labelled[:10]) == list(range(10)) and len(set(labelled[10:])) == 6


@pytest.mark.slow
def test_consistency_training_learns_from_the_pool_resumes_to_the_same_weights_and_saves_a_plain_model(
    tmp_path, tiny_data
):
    import keras
    import mlflow

    root, _ = _pool_data(tmp_path, tiny_data)
    params, ws, inputs = _semi_workspace(tmp_path / "a", root, **CONSISTENCY)
    whole = run_step(params, ws, *inputs)
    rounds = json.loads((ws.out / "train" / "semi.json").read_text())["rounds"]
    assert [(r["method"], r["pool"], r["mu"]) for r in rounds] == [("consistency", inputs[0].pool["usable"], 1)]
    assert 0 <= rounds[0]["sure"] <= rounds[0]["pool"]
    client = mlflow.MlflowClient(tracking_uri=params.register_.tracking_uri)
    tag = client.get_run(whole.run_id).data.tags["medpipe.semi"]
    assert tag == semi_tag(rounds, "consistency") and tag.startswith(f"consistency: {rounds[0]['pool']} pool images")
    assert [m.step for m in client.get_metric_history(whole.run_id, "round0/val_roc_auc")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(whole.run_id, "val_roc_auc")] == [0, 1, 2]
    saved = keras.models.load_model(ws.base / whole.model_path)
    assert saved.loss == "categorical_crossentropy"  # served and evaluated like any classifier

    params, ws, inputs = _semi_workspace(tmp_path / "b", root, **CONSISTENCY)
    with pytest.raises(_Interrupt):  # in the student's second epoch
        run_step(params, ws, *inputs, callbacks=(_interrupt_at(5),))
    assert json.loads((ws.out / "checkpoint" / "round1" / "progress.json").read_text())["epoch"] == 2
    resumed = run_step(params, ws, *inputs, resume=True)
    assert resumed.weights_sha256 == whole.weights_sha256
    assert json.loads((ws.out / "train" / "semi.json").read_text())["rounds"] == rounds


def test_consistency_refuses_several_gpus_whose_split_would_break_a_batch_s_layout():
    from pipeline.consistency import one_device
    from pipeline.errors import ConfigError

    one_device(0)
    one_device(1)
    with pytest.raises(
        ConfigError,
        match="semi.method: consistency trains on one device and this machine shows 2 GPUs: pick one with",
    ):
        one_device(2)
