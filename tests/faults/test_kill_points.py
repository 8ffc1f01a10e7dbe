"""Crashes and races with real processes and real signals, in one committed git + DVC project.

Each step starts a real `medpipe` process, waits until it stands at a named fail point
(pipeline.faults: it writes a marker and waits), and either `kill -9`s it there or lets it go on
while a competitor runs. After every kill the invariants hold (every alias points to a complete,
gated version; the rollback target exists; no process of the killed run is left), and the next
`medpipe run` recovers: it resumes the killed training to the uninterrupted run's weights, gates the
version a crash left ungated, and finishes an interrupted alias change. The steps build on each
other, in file order.
"""

import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.flows.test_dvc_lineage import BIN, tiny_project
from tests.helpers import assert_offline, guarded_env

pytestmark = pytest.mark.slow
NAME = "medpipe-classifier"


@pytest.fixture(scope="module")
def chain(prefect_harness, tmp_path_factory, tiny_data):
    from prefect.settings import get_current_settings

    root = tmp_path_factory.mktemp("faults")
    project = root / "project"
    project.mkdir()
    tiny_project(project, tiny_data)
    env = guarded_env(
        {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_API_URL": str(get_current_settings().api.url),
        },
        root / "netguard.log",
    )
    yield SimpleNamespace(project=project, root=root, env=env, weights=None, n=0, killed=[])
    assert_offline(root / "netguard.log")  # no medpipe process (nor its servers) tried to leave loopback


def _unshare_works() -> bool:
    try:
        return (
            subprocess.run(
                ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _client(chain):
    import mlflow

    uri = f"sqlite:///{chain.project}/mlflow/mlflow.db"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _start(
    chain, point: str | None, *args: str, ephemeral: bool = False, offline: bool = False
) -> tuple[subprocess.Popen, Path]:
    chain.n += 1
    marker = chain.root / f"marker-{chain.n}"
    env = {**chain.env, "MEDPIPE_FAULT_POINT": point or "", "MEDPIPE_FAULT_MARKER": str(marker)}
    if ephemeral or offline:
        env.pop("PREFECT_API_URL")  # its own temporary Prefect server, which must die with it
    command = [str(BIN / "medpipe"), *args, "--params", str(chain.project / "params.yaml")]
    if offline:  # a fresh network namespace with only loopback: medpipe needs no network at all
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    log = open(chain.root / f"log-{chain.n}.txt", "w+")
    process = subprocess.Popen(
        command, cwd=chain.project, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    process.log = log
    return process, marker


def _output(process) -> str:
    process.log.seek(0)
    return process.log.read()


def _wait_at(process, marker: Path, seconds: int = 600) -> None:
    for _ in range(seconds * 10):
        if marker.is_file() and marker.read_text().strip():
            return
        assert process.poll() is None, f"exited before its fail point:\n{_output(process)[-4000:]}"
        time.sleep(0.1)
    raise AssertionError(f"fail point not reached in {seconds} s:\n{_output(process)[-4000:]}")


def _session_alive(sid: int) -> list[str]:
    from pipeline.watchdog import proc_stat

    stats = {pid: proc_stat(int(pid)) for pid in os.listdir("/proc") if pid.isdigit()}
    return [pid for pid, stat in stats.items() if stat and stat.session == sid and stat.state != "Z"]


def _kill_at(chain, point: str, *args: str, ephemeral: bool = False) -> str:
    """Run medpipe to `point`, kill -9 it there; assert nothing of it survives; return its output."""
    process, marker = _start(chain, point, *args, ephemeral=ephemeral)
    _wait_at(process, marker)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    process.wait(timeout=60)
    for _ in range(100):  # its temporary Prefect server and any worker go with it
        if not _session_alive(process.pid):
            break
        time.sleep(0.1)
    assert not _session_alive(process.pid), f"processes of the killed run survive: {_session_alive(process.pid)}"
    return _output(process)


def _finish(chain, *args: str, point: str | None = None, offline: bool = False) -> str:
    process, _ = _start(chain, point, *args, offline=offline)
    process.wait(timeout=900)
    out = _output(process)
    assert process.returncode == 0, out[-4000:]
    return out


def _aliases(chain) -> dict[str, int]:
    from pipeline.registry import aliases_of

    return aliases_of(_client(chain), NAME)


def _invariants(chain, killed: bool = True) -> None:
    """Every alias names a complete, gated version; a champion and a rollback target exist once a
    promotion moved the champion; no MLflow run is left RUNNING; after a finished command, no journal."""
    from pipeline.registry import PENDING, is_complete

    client = _client(chain)
    aliases = _aliases(chain)
    assert "champion" in aliases
    for alias, version in aliases.items():
        mv = client.get_model_version(NAME, str(version))
        assert is_complete(mv), (alias, version, mv.tags)
        assert mv.tags["medpipe.promotion"] != PENDING, (alias, version, mv.tags)
    if len(client.search_model_versions(f"name='{NAME}'")) > 1 and any(
        "promoted" in v.tags.get("medpipe.promotion", "") or "roll" in v.tags.get("medpipe.promotion", "")
        for v in client.search_model_versions(f"name='{NAME}'")
        if int(v.version) > 1
    ):
        assert "previous" in aliases, aliases
    experiment = client.get_experiment_by_name("medpipe").experiment_id
    for _ in range(600):  # a killed run's watchdog closes its MLflow run within seconds
        if not client.search_runs([experiment], "attributes.status = 'RUNNING'"):
            break
        time.sleep(0.1)
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    if not killed:
        assert "medpipe.alias_journal" not in client.get_registered_model(NAME).tags
        for version in client.search_model_versions(f"name='{NAME}'"):
            if "medpipe.aliases" in version.tags:
                mine = sorted(a for a, v in aliases.items() if v == int(version.version))
                assert version.tags["medpipe.aliases"] == (",".join(mine) or "none"), version.version


def _state(chain, folder: str) -> dict[str, bytes]:
    root = chain.project / "outputs" / folder
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_first_run_makes_the_champion_without_any_network(chain):
    out = _finish(chain, "run", offline=_unshare_works())  # where the machine allows a network namespace
    assert "models:/medpipe-classifier/1" in out
    assert _aliases(chain) == {"champion": 1}
    chain.weights = _client(chain).get_model_version(NAME, "1").tags["medpipe.weights_sha256"]
    _invariants(chain, killed=False)


def test_kill_in_validate_keeps_the_last_split_and_leaves_no_server(chain):
    before = _state(chain, "validate")
    _kill_at(chain, "validate.scan", "run", "--force", ephemeral=True)
    assert _state(chain, "validate") == before  # the complete outputs of the last run, untouched
    _invariants(chain)


def test_kill_in_preprocess_leaves_complete_shards(chain):
    from pipeline import validate
    from pipeline.autoparams import resolve
    from pipeline.config import Workspace, load_params
    from pipeline.preprocess import cache_key, is_current

    before = _state(chain, "preprocess")
    _kill_at(chain, "preprocess.split", "run", "--force", "--set", "preprocess.shard_size=8")
    assert _state(chain, "preprocess") == before
    params = load_params(chain.project / "params.yaml")
    ws = Workspace.create(params, chain.project / "params.yaml")
    validated, params = validate.load_result(ws), resolve(params, ws.data_root).params  # colour `auto`, as run
    assert is_current(chain.project / "outputs" / "preprocess", cache_key(params, validated))
    _invariants(chain)


def _runs(chain, status: str) -> list:
    client = _client(chain)
    return client.search_runs(
        [client.get_experiment_by_name("medpipe").experiment_id], f"attributes.status = '{status}'"
    )


def test_kill_in_training_leaves_a_checkpoint_no_version_and_no_running_run(chain):
    _kill_at(chain, "train.epoch:1", "run", "--force")
    assert (chain.project / "outputs" / "checkpoint" / "progress.json").is_file()
    assert len(_client(chain).search_model_versions(f"name='{NAME}'")) == 1
    for _ in range(600):  # the run's watchdog closes its MLflow run as KILLED once it is dead
        if not _runs(chain, "RUNNING"):
            break
        time.sleep(0.1)
    assert not _runs(chain, "RUNNING")
    chain.killed = [r.info.run_id for r in _runs(chain, "KILLED")]
    assert len(chain.killed) == 1
    _invariants(chain)


def test_resume_in_a_fresh_process_reaches_the_uninterrupted_weights_then_kill_after_register(chain):
    stale = chain.project / "outputs" / "evaluate" / "gradcam" / "stale-from-an-earlier-run.png"
    stale.write_bytes(b"old")
    _kill_at(chain, "register.created", "run", "--resume")
    assert not stale.exists()  # evaluation wrote a fresh folder
    client = _client(chain)
    v2 = client.get_model_version(NAME, "2")
    assert v2.run_id == chain.killed[0]  # the interrupted MLflow run, continued
    assert v2.tags["medpipe.promotion"] == "pending"
    assert "medpipe.task_signature" in v2.tags
    assert v2.tags["medpipe.weights_sha256"] == chain.weights  # resumed == uninterrupted
    assert client.get_run(v2.run_id).info.status == "FINISHED"
    logged = [a.path for a in client.list_artifacts(v2.run_id, "evaluation/gradcam")]
    assert logged
    assert not any("stale" in path for path in logged)
    assert _aliases(chain) == {"champion": 1}  # an ungated version is nobody's alias
    _invariants(chain)


def test_kill_as_the_gate_starts_leaves_the_version_ungated(chain):
    out = _kill_at(chain, "promote.start", "run")  # same lineage as version 2, which is ungated: gate it
    assert "up to date" not in out
    assert _client(chain).get_model_version(NAME, "2").tags["medpipe.promotion"] == "pending"
    _invariants(chain)


def test_promote_and_stage_wait_for_the_run_gate_and_end_consistent(chain):
    run, marker = _start(chain, "promote.start", "run")
    _wait_at(run, marker)  # the run holds the project lock, standing in its gate
    shards = _state(chain, "preprocess")
    forced, _ = _start(chain, None, "promote", "--version", "2", "--force")
    stage, _ = _start(chain, None, "stage", "preprocess")
    for process in (forced, stage):
        for _ in range(600):
            if "waiting for it to finish" in _output(process):
                break
            assert process.poll() is None, _output(process)
            time.sleep(0.1)
        assert "waiting for it to finish" in _output(process)
    assert _aliases(chain) == {"champion": 1}
    assert _state(chain, "preprocess") == shards
    marker.with_name(marker.name + ".go").write_text("")
    for process in (run, forced, stage):
        process.wait(timeout=900)
        assert process.returncode == 0, _output(process)[-3000:]
    assert "up to date" in _output(run)
    assert "@challenger" in _output(run)  # a tie does not promote
    assert _aliases(chain) == {"champion": 2, "previous": 1}  # the forced promotion came after, whole
    assert _client(chain).get_model_version(NAME, "2").tags["medpipe.promotion"] == "promoted (forced)"
    assert "medpipe.model_card" in _client(chain).get_model_version(NAME, "2").tags  # the run that gated it made it
    _invariants(chain, killed=False)


def test_kill_between_alias_writes_keeps_a_rollback_target(chain):
    _kill_at(chain, "promote.aliases", "rollback")
    aliases = _aliases(chain)
    assert aliases["champion"] == 1
    assert "previous" in aliases
    assert "medpipe.alias_journal" in _client(chain).get_registered_model(NAME).tags
    _invariants(chain)


def test_next_run_finishes_the_alias_change_and_says_up_to_date(chain):
    out = _finish(chain, "run")
    assert "finished an interrupted alias change" in out, out[-3000:]
    assert "up to date" in out, out[-3000:]
    assert _aliases(chain) == {"champion": 1, "previous": 2}
    assert _client(chain).get_model_version(NAME, "2").tags["medpipe.promotion"] == "rolled back"
    _invariants(chain, killed=False)


def test_two_promotions_at_once_end_as_one_after_the_other(chain):
    first, marker = _start(chain, "promote.aliases", "promote", "--version", "2", "--force")
    _wait_at(first, marker)  # between its two alias writes, holding the lock
    second, _ = _start(chain, None, "rollback")
    for _ in range(600):
        if "waiting for it to finish" in _output(second):
            break
        assert second.poll() is None, _output(second)
        time.sleep(0.1)
    marker.with_name(marker.name + ".go").write_text("")
    for process in (first, second):
        process.wait(timeout=600)
        assert process.returncode == 0, _output(process)[-3000:]
    assert _aliases(chain) == {"champion": 1, "previous": 2}  # promote 2, then roll back to 1
    _invariants(chain, killed=False)
