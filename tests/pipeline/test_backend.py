"""pipeline.backend: which Keras backend a run uses, and what it needs."""

import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.backend import requirements, resolve, select
from pipeline.errors import ConfigError
from tests.helpers import REPO


def test_auto_follows_keras_backend_else_tensorflow(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert resolve("auto") == "tensorflow"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert resolve("auto") == "jax"
    assert resolve("tensorflow") == "tensorflow"  # params name one: the variable does not override it
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(ConfigError, match="KERAS_BACKEND=torch is not one of tensorflow, jax"):
        resolve("auto")


def test_a_process_cannot_switch_backend_once_keras_runs():
    import keras

    assert keras.backend.backend() == "tensorflow"  # the test process
    assert select("tensorflow") == "tensorflow"
    with pytest.raises(ConfigError, match="jax asked for, but Keras already runs on tensorflow"):
        select("jax")


def test_requirements_pin_the_backend_as_installed():
    from importlib.metadata import version

    assert requirements("jax") == [f"jax=={version('jax')}", f"jaxlib=={version('jaxlib')}"]
    assert requirements("tensorflow") == [f"tensorflow-cpu=={version('tensorflow-cpu')}"]


# The training step where TensorFlow, Prefect, MLflow, DVC and GX cannot be imported (a GPU machine has
# none of them): the feed, the model and model.fit, with augmentation, on JAX.
NO_TENSORFLOW = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"tensorflow", "prefect", "mlflow", "dvc", "great_expectations"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, Block())
    import numpy as np
    from pipeline.backend import select
    select("jax")
    from pipeline.config import AugmentParams, Params
    from pipeline.feed import train_feed
    from pipeline.shards import ArrayShards
    from pipeline.train import configure_determinism, configure_devices, new_model, weights_sha256
    params = Params.model_validate({"train": {"epochs": 2, "batch_size": 8}, "preprocess": {"normalize": "unit"}})
    configure_devices(params.train)
    configure_determinism(params.train.seed, True)
    rng = np.random.default_rng(0)
    split = ArrayShards(rng.integers(0, 256, (24, 16, 16, 1), dtype=np.uint8), np.arange(24) % 2)
    plan = (np.arange(24), np.arange(24) % 3 == 0)
    meta = {"size": 16, "channels": 1, "classes": ["a", "b"], "mean": 0.5, "std": 0.25}
    model = new_model(params, meta, None, 3)
    feed, steps = train_feed(split, plan, 2, params.train, AugmentParams(noise=0.05))
    model.fit(feed, epochs=2, steps_per_epoch=steps, verbose=0, shuffle=False)
    from pipeline.config import PretrainParams
    from pipeline.pretrain import contrastive_model, pretrain_feed
    pre = PretrainParams(epochs=1, batch_size=8)
    contrastive = contrastive_model(model, pre)  # self-supervised pre-training runs there too
    pretrain, pretrain_steps = pretrain_feed(split, pre, params.train.seed, 1)
    contrastive.fit(pretrain, epochs=1, steps_per_epoch=pretrain_steps, verbose=0, shuffle=False)
    print("backend", __import__("keras").backend.backend())
    print("weights", weights_sha256(model.get_weights()))
    print("imported", sorted({m.split(".")[0] for m in sys.modules} & BLOCKED))
    """
)


def test_the_training_step_runs_on_jax_without_tensorflow_and_repeats_exactly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_HOME": str(tmp_path / ".keras")}
    env.pop("KERAS_BACKEND", None)
    outputs = [
        subprocess.run([sys.executable, "-c", NO_TENSORFLOW], capture_output=True, text=True, env=env, timeout=300)
        for _ in range(2)
    ]
    for done in outputs:
        assert done.returncode == 0, done.stderr[-3000:]
        assert "backend jax" in done.stdout
        assert "imported []" in done.stdout  # no TensorFlow, Prefect, MLflow, DVC or GX module
    weights = [line for done in outputs for line in done.stdout.splitlines() if line.startswith("weights")]
    assert weights[0] == weights[1]  # seeded: the same weights on a second run


ON_JAX = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pipeline.backend import select
    select("jax")
    from pipeline.explain import grad_cam
    from pipeline.model import load_model
    folder = sys.argv[1]
    model, x = load_model(f"{folder}/model.keras"), np.load(f"{folder}/x.npy")
    cams = [grad_cam(model, image) for image in x]
    np.save(f"{folder}/jax_proba.npy", np.asarray(model.predict(x, verbose=0)))
    np.save(f"{folder}/jax_cams.npy", np.stack([c.heatmap for c in cams]))
    print(__import__("keras").backend.backend())
    """
)


@pytest.mark.parametrize("name", ["seed_cnn", "resnet_small"])
def test_a_model_saved_on_tensorflow_predicts_and_explains_the_same_on_jax(tmp_path, name):
    import numpy as np

    from pipeline.config import ModelParams
    from pipeline.explain import grad_cam
    from pipeline.model import build_model

    model = build_model(ModelParams(name=name), (32, 32, 1), 3, ("dataset", 0.4, 0.2))
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 1)).astype(np.float32)
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("KERAS_BACKEND", None)
    done = subprocess.run(
        [sys.executable, "-c", ON_JAX, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("jax")
    assert np.allclose(np.load(tmp_path / "jax_proba.npy"), model.predict(x, verbose=0), atol=1e-5)
    cams = np.stack([grad_cam(model, image).heatmap for image in x])
    assert np.allclose(np.load(tmp_path / "jax_cams.npy"), cams, atol=1e-3)  # the same evidence, either backend
