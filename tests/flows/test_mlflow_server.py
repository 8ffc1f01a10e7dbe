"""The whole flow against a real `mlflow server` on 127.0.0.1 (a shared tracking server, as teams run)."""

import os

import pytest

from tests.helpers import BIN, assert_offline, free_port, guarded_env, start_process, stop, wait_until_up, write_params

pytestmark = pytest.mark.slow


def test_flow_tracks_registers_and_promotes_on_a_tracking_server(prefect_harness, project, tmp_path_factory):
    import mlflow

    from flows.training import training_flow

    store = tmp_path_factory.mktemp("server")
    port = free_port()
    server = start_process(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store}/mlflow.db",
            "--artifacts-destination",
            str(store / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        # no job consumers (7 processes): medpipe starts no MLflow server jobs
        guarded_env({**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, store / "netguard.log"),
        store,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", server)
        write_params(project, register={"tracking_uri": url})
        first = training_flow(params_file=str(project / "params.yaml"))
        second = training_flow(params_file=str(project / "params.yaml"))
        assert (first.version, second.version) == (1, 2)
        assert "@challenger" in second.promotion  # same model again: no gain, no promotion

        client = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
        assert {a: int(v) for a, v in client.get_registered_model("medpipe-classifier").aliases.items()} == {
            "champion": 1,
            "challenger": 2,
        }
        version = client.get_model_version("medpipe-classifier", "2")
        assert version.tags["medpipe.promotion"] == "challenger"
        assert version.description.startswith("seed_cnn")
        artifacts = {a.path for a in client.list_artifacts(first.run_id, "evaluation")}
        assert "evaluation/report.md" in artifacts  # artifacts went through the server
        assert (store / "artifacts").is_dir()
        assert not (project / "mlflow").exists()  # nothing local
        assert client.get_run(first.run_id).data.metrics["test_roc_auc"] == pytest.approx(first.test_metrics["roc_auc"])
    finally:
        stop(server)
    assert_offline(store / "netguard.log")
