"""The registered model served by a real `mlflow models serve` on 127.0.0.1: raw images in, labels out."""

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest

from tests.helpers import BIN, assert_offline, bomb_png, guarded_env, serve_model, stop, wait_until_up

pytestmark = pytest.mark.slow


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_served_champion_takes_raw_images(prefect_harness, project):
    from flows.training import training_flow

    summary = training_flow(params_file=str(project / "params.yaml"))
    bin_dir = BIN
    env = guarded_env(
        {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow/mlflow.db",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        },
        project / "netguard.log",
    )
    server, url = serve_model("models:/medpipe-classifier@champion", env, project)
    try:
        wait_until_up(f"{url}/ping", server)
        path = project / "data" / pd.read_csv(project / "data/manifest.csv")["path"][0]
        png = base64.b64encode(path.read_bytes()).decode()
        status, answer = _post(
            f"{url}/invocations",
            json.dumps({"dataframe_split": {"columns": ["image"], "data": [[png], [png]]}}).encode(),
        )
        assert status == 200, answer
        rows = answer["predictions"]
        assert len(rows) == 2
        assert rows[0]["label"] in ("normal", "nodule", "effusion")
        assert sum(rows[0][c] for c in ("normal", "nodule", "effusion")) == pytest.approx(1, abs=1e-5)
        done = subprocess.run(
            [str(bin_dir / "medpipe"), "predict", str(path), "--params", str(project / "params.yaml")],
            capture_output=True,
            text=True,
            timeout=300,
            env=guarded_env(dict(os.environ), project / "netguard.log"),
        )  # as the server says
        local = json.loads(done.stdout)
        assert local["version"] == summary.version
        assert local["predictions"][0]["label"] == rows[0]["label"]
        assert np.allclose(
            list(local["predictions"][0]["probabilities"].values()),
            [rows[0][c] for c in ("normal", "nodule", "effusion")],
            atol=1e-4,
        )

        status, answer = _post(f"{url}/invocations", json.dumps({"instances": [{"image": png}]}).encode())
        assert status == 200
        assert answer["predictions"][0]["label"] == rows[0]["label"]  # base64 in every form
        bomb = base64.b64encode(bomb_png(project / "bomb.png", 20000).read_bytes()).decode()
        status, answer = _post(
            f"{url}/invocations", json.dumps({"dataframe_split": {"columns": ["image"], "data": [[bomb]]}}).encode()
        )
        assert status == 400, answer
        assert answer["message"].startswith("image[0]: image of 20000x20000"), answer
        assert "stack_trace" not in answer
        assert bomb[:100] not in answer["message"]  # no trace, no echo
        bad = base64.b64encode(b"not an image").decode()
        status, answer = _post(
            f"{url}/invocations", json.dumps({"dataframe_split": {"columns": ["image"], "data": [[bad]]}}).encode()
        )
        assert status == 400
        assert "image[0]: not a decodable image" in answer["message"]
        status, answer = _post(f"{url}/invocations", b"this is not json")
        assert status == 400
        assert "valid JSON" in answer["message"]
    finally:
        stop(server)
    assert_offline(project / "netguard.log")
