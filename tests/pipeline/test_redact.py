"""No credentials in what medpipe logs: redact_uri, and the params train.start_run logs to MLflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.redact import redact_params, redact_uri

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://user:secret@host:5000/mlflow", "https://user:***@host:5000/mlflow"),
        ("https://user:p%40ss@word@host/", "https://user:***@host/"),
        ("https://host/x?token=abc&page=2", "https://host/x?token=***&page=2"),
        (
            "https://h/?access_token=a&X-Amz-Signature=b&X-Amz-Credential=c&sig=d&api_key=e&password=f&sv=1",
            "https://h/?access_token=***&X-Amz-Signature=***&X-Amz-Credential=***&sig=***&api_key=***&password=***&sv=1",
        ),
        ("https://u:pw@h/?Token=t#frag", "https://u:***@h/?Token=***#frag"),
        ("https://user@host/", "https://user@host/"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:///mlflow/mlflow.db", "sqlite:///mlflow/mlflow.db"),
        ("postgresql://mlflow:hunter2@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("mlflow/artifacts", "mlflow/artifacts"),
        ("http://[::1:5000/?token=x", "***"),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_redact_params_walks_nested_values_and_keeps_the_rest():
    raw = {
        "register": {"tracking_uri": "https://a:b@h?key=k", "experiment": "medpipe"},
        "validate": {"labels": ["x", "https://u:p@h"]},
        "train": {"epochs": 3},
    }
    assert redact_params(raw) == {
        "register": {"tracking_uri": "https://a:***@h?key=***", "experiment": "medpipe"},
        "validate": {"labels": ["x", "https://u:***@h"]},
        "train": {"epochs": 3},
    }


START_RUN = """
import json, sys
from pathlib import Path
import mlflow, yaml
from pipeline.config import Workspace, load_params
from pipeline.train import Progress, start_run
from pipeline.validate import ValidationReport

params = load_params(Path("params.yaml"), {"register.tracking_uri": sys.argv[1]})
ws = Workspace.create(params, Path("params.yaml"))
validated = ValidationReport(True, [], 0, {}, report_md=str(ws.step_dir("validate") / "report.md"))
validated.splits_csv.write_text("path,label,patient_id,split,sha256,fingerprint\\na.png,x,p,train,,\\n")
with start_run(params, ws, validated, Progress(key="k")) as run:
    pass
logged = mlflow.get_run(run.info.run_id)
artifact = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/params.yaml")).read_text())
print(json.dumps({"param": logged.data.params["params.register.tracking_uri"],
                  "artifact": artifact["register"]["tracking_uri"]}))
"""


def test_start_run_logs_no_tracking_uri_credentials(project):
    # The user's MLFLOW_TRACKING_URI wins over params, so the run goes to a local store while params
    # name a server with credentials.
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{project}/t.db"}
    done = subprocess.run(
        [sys.executable, "-c", START_RUN, "https://alice:s3cret@mlflow.example/?token=t0k"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logged = json.loads(done.stdout.strip().splitlines()[-1])
    assert logged == {
        "param": "https://alice:***@mlflow.example/?token=***",
        "artifact": "https://alice:***@mlflow.example/?token=***",
    }
    assert "s3cret" not in (project / "t.db").read_bytes().decode("latin-1")
