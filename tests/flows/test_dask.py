"""The data steps on a real Dask LocalCluster (2 worker processes on 127.0.0.1) through Prefect's
DaskTaskRunner give the same scan, split table and shards as the default runner."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from flows.data import ADDRESS_ENV, dask_runner, run_on_dask
from pipeline import preprocess, validate
from pipeline.autoparams import resolve
from pipeline.config import DaskParams, Workspace, load_params
from tests.helpers import BIN, free_port, write_params

pytestmark = pytest.mark.slow
SMALL_UNITS = {"preprocess": {"size": 32, "shard_size": 16}, "dask": {"workers": 2, "chunk_size": 8}}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_runner_choice(monkeypatch):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    assert dask_runner(DaskParams()) is None
    assert dask_runner(DaskParams(address="tcp://127.0.0.1:8786")).address == "tcp://127.0.0.1:8786"
    monkeypatch.setenv(ADDRESS_ENV, "tcp://127.0.0.1:9999")
    assert dask_runner(DaskParams(workers=2)).address == "tcp://127.0.0.1:9999"


def test_a_scheduler_that_does_not_answer_is_a_one_line_error(project):
    port = free_port()
    done = subprocess.run(
        [
            str(BIN / "medpipe"),
            "run",
            "--params",
            str(project / "params.yaml"),
            "--set",
            f"dask.address=tcp://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: dask.address: no Dask scheduler answers at tcp://127.0.0.1:{port} (ConnectionRefusedError)"
    )
    assert not (project / "outputs").exists()  # nothing ran


def test_local_cluster_gives_the_default_runners_outputs(tmp_path, tiny_data, prefect_harness):
    shutil.copytree(tiny_data, tmp_path / "data")
    params = resolve(load_params(write_params(tmp_path, **SMALL_UNITS)), tmp_path / "data").params
    default = Workspace(base=tmp_path, data_root=tmp_path / "data", out=tmp_path / "default")
    report = validate.run_step(params, default)
    assert report.success
    preprocess.run_step(params, default, report)

    on_dask = Workspace(base=tmp_path, data_root=tmp_path / "data", out=tmp_path / "dask")

    @flow
    def parent() -> tuple:
        return run_on_dask(params, on_dask)

    report, prepared = parent()
    assert report.success
    assert not prepared.cached
    for name in ("splits.csv", "report.md"):
        assert (on_dask.out / "validate" / name).read_bytes() == (default.out / "validate" / name).read_bytes()
    scans = [pd.read_csv(ws.out / "cache" / "scan.csv", keep_default_na=False) for ws in (default, on_dask)]
    pd.testing.assert_frame_equal(*scans)
    assert _files(on_dask.out / "preprocess") == _files(default.out / "preprocess")  # shards and meta.json
    meta = json.loads((on_dask.out / "preprocess" / "meta.json").read_text())
    assert len(meta["splits"]["train"]["shards"]) > 2  # several units of work really were spread
    assert np.load(on_dask.out / "preprocess" / meta["splits"]["train"]["shards"][0]).shape[1:] == (32, 32, 1)

    with get_client(sync_client=True) as client:  # the workers reported to this Prefect server
        runs = {
            name: client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)))
            for name in ("scan-chunk", "write-shard")
        }
    n_images = len(pd.read_csv(default.out / "validate" / "splits.csv"))
    assert len(runs["scan-chunk"]) >= -(-n_images // 8)
    assert len(runs["write-shard"]) == sum(len(s["shards"]) for s in meta["splits"].values())
    assert {r.state_name for rs in runs.values() for r in rs} == {"Completed"}
