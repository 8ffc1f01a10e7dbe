"""Registry promotion with real MLflow: first model, better, worse, rollback, forced."""

import shutil

import pytest

from tests.helpers import write_params

pytestmark = pytest.mark.slow
AWFUL = {"train.learning_rate": "1e-7", "train.epochs": "1"}
GOOD = {"train.epochs": "8"}


def _aliases(root):
    import mlflow

    uri = f"sqlite:///{root}/mlflow/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {a: int(v) for a, v in client.get_registered_model("medpipe-classifier").aliases.items()}


def test_promotion_gate_rollback_and_force(prefect_harness, tmp_path, tiny_data):
    from flows.training import training_flow
    from pipeline import promote
    from pipeline.autoparams import resolve
    from pipeline.config import Workspace, load_params

    shutil.copytree(tiny_data, tmp_path / "data")
    write_params(tmp_path, promote={"floors": {"roc_auc": 0.0}, "guards": {}})
    params_file = str(tmp_path / "params.yaml")

    first = training_flow(params_file=params_file, overrides=AWFUL)
    assert first.promotion.startswith("@champion: first model")
    assert _aliases(tmp_path) == {"champion": 1}
    better = training_flow(params_file=params_file, overrides=GOOD)
    assert better.promotion.startswith("@champion")
    assert _aliases(tmp_path) == {"champion": 2, "previous": 1}
    worse = training_flow(params_file=params_file, overrides=AWFUL)
    assert worse.promotion.startswith("@challenger")
    assert _aliases(tmp_path) == {"champion": 2, "previous": 1, "challenger": 3}

    params = load_params(tmp_path / "params.yaml")
    ws = Workspace.create(params, tmp_path / "params.yaml")
    params = resolve(params, ws.data_root).params  # colour `auto`, as the runs decided it
    assert promote.rollback(params, ws) == {"champion": 1, "previous": 2}
    forced = promote.promote(params, ws, 3, force=True)
    assert forced.promoted
    assert forced.forced
    assert _aliases(tmp_path)["champion"] == 3
    assert _aliases(tmp_path)["previous"] == 1

    import subprocess
    import sys
    from pathlib import Path

    medpipe = str(Path(sys.executable).with_name("medpipe"))
    done = subprocess.run([medpipe, "rollback", "--params", params_file], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    assert _aliases(tmp_path)["champion"] == 1
    done = subprocess.run(
        [medpipe, "promote", "--version", "2", "--params", params_file], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "version 2: champion" in done.stdout, done.stderr
    assert _aliases(tmp_path) == {"champion": 2, "previous": 1}  # the forced champion 3 lost @challenger
