"""train.backend: jax end to end on CPU, as users run it: `medpipe run` (killed in training with kill -9,
then resumed), the registered version served by a real `mlflow models serve`, the same version predicted
by TensorFlow (a model crosses backends), and `medpipe reproduce` rebuilding it on JAX to the same weights.
One committed git + DVC project, trained once for the module."""

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from tests.flows.test_dvc_lineage import BIN, sh, tiny_project
from tests.flows.test_retraining import _client
from tests.flows.test_serving import _post
from tests.helpers import assert_offline, guarded_env, serve_model, stop, wait_until_up, write_params

pytestmark = pytest.mark.slow
NAME = "medpipe-classifier"


class Trained(NamedTuple):
    project: Path
    env: dict
    resumed: subprocess.CompletedProcess


def _medpipe(project: Path, *args: str, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "medpipe"), *args, "--params", str(project / "params.yaml")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(prefect_harness, tmp_path_factory, tiny_data) -> Trained:
    from prefect.settings import get_current_settings

    project = tmp_path_factory.mktemp("jax")
    tiny_project(project, tiny_data)
    write_params(project, train={"backend": "jax", "epochs": 3})
    sh(project, "git", "commit", "-qam", "train on JAX")
    env = guarded_env(
        {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_API_URL": str(get_current_settings().api.url),
        },
        project / "netguard.log",
    )
    env.pop("KERAS_BACKEND", None)
    marker = project / "fault.marker"
    killed = subprocess.Popen(
        [str(BIN / "medpipe"), "run", "--params", str(project / "params.yaml")],
        cwd=project,
        env={**env, "MEDPIPE_FAULT_POINT": "train.epoch:1", "MEDPIPE_FAULT_MARKER": str(marker)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for _ in range(6000):  # after the first epoch's checkpoint
        if marker.is_file() and marker.read_text().strip() or killed.poll() is not None:
            break
        time.sleep(0.1)
    assert killed.poll() is None, killed.communicate()[0][-4000:]
    os.kill(int(marker.read_text()), signal.SIGKILL)
    killed.communicate(timeout=60)
    resumed = _medpipe(project, "run", "--resume", env=env)
    yield Trained(project, env, resumed)
    assert_offline(project / "netguard.log")


def test_a_jax_run_killed_in_training_resumes_to_a_registered_gated_version(trained):
    assert trained.resumed.returncode == 0, trained.resumed.stdout[-3000:] + trained.resumed.stderr[-3000:]
    logged = trained.resumed.stderr + trained.resumed.stdout
    assert "epoch 1/3" not in logged  # killed after its first epoch's checkpoint: not trained again
    assert "epoch 2/3" in logged
    assert json.loads((trained.project / "outputs/train/run.json").read_text())["resumed_from"] == 1
    client = _client(trained.project)
    version = client.get_model_version(NAME, "1")
    assert version.tags["medpipe.backend"] == "jax"
    assert version.tags["medpipe.promotion"] != "pending"  # the gate decided on it
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["params.train.backend"] == "jax"
    assert [a.path for a in client.list_artifacts(version.run_id, "evaluation/gradcam")]  # Grad-CAM on JAX
    from urllib.parse import urlparse

    logged = Path(urlparse(client.get_model_version_download_uri(NAME, "1")).path)  # the local artifact store
    requirements = (logged / "requirements.txt").read_text()
    assert "jax==" in requirements
    assert "tensorflow" not in requirements
    assert json.loads((logged / "artifacts" / "serving.json").read_text())["backend"] == "jax"


def test_the_jax_model_is_served_and_predicts_the_same_on_tensorflow(trained):
    project = trained.project
    env = {**trained.env, "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow/mlflow.db"}
    server, url = serve_model(f"models:/{NAME}/1", env, project)
    try:
        wait_until_up(f"{url}/ping", server)
        path = project / "data" / pd.read_csv(project / "data/manifest.csv")["path"][0]
        png = base64.b64encode(path.read_bytes()).decode()
        status, answer = _post(
            f"{url}/invocations", json.dumps({"dataframe_split": {"columns": ["image"], "data": [[png]]}}).encode()
        )
    finally:
        stop(server)
    assert status == 200, answer
    served = answer["predictions"][0]
    on_tf = _medpipe(
        project,
        "predict",
        str(path),
        "--model",
        f"models:/{NAME}/1",
        env={**trained.env, "KERAS_BACKEND": "tensorflow"},
    )
    assert on_tf.returncode == 0, on_tf.stderr[-3000:]
    local = json.loads(on_tf.stdout)["predictions"][0]
    assert local["label"] == served["label"]
    classes = list(local["probabilities"])
    assert np.allclose(list(local["probabilities"].values()), [served[c] for c in classes], atol=1e-4)


def test_reproduce_rebuilds_the_jax_version_to_the_same_weights(trained):
    rebuilt = _medpipe(trained.project, "reproduce", "--version", "1", env=trained.env)
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert "weights identical, all metrics identical" in rebuilt.stdout  # resumed == rebuilt from scratch
