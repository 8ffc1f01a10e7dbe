"""Test isolation: $HOME, $TMPDIR and every tool's state dir point into one throw-away folder.

This runs before any test module imports Prefect, MLflow, DVC, GX or TF, which all write to
$HOME or $TMPDIR (~/.prefect, ~/.keras, ~/.config/dvc, ...).
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SANDBOX = Path(tempfile.mkdtemp(prefix="medpipe-tests-"))
for _var, _sub in {
    "HOME": "home",
    "TMPDIR": "tmp",
    "PREFECT_HOME": "home/.prefect",
    "KERAS_HOME": "home/.keras",
    "MPLCONFIGDIR": "home/.config/matplotlib",
    "DVC_SITE_CACHE_DIR": "dvc-site",
    "XDG_CONFIG_HOME": "home/.config",
    "XDG_CACHE_HOME": "home/.cache",
}.items():
    os.environ[_var] = str(_SANDBOX / _sub)
    (_SANDBOX / _sub).mkdir(parents=True, exist_ok=True)
tempfile.tempdir = None  # re-read TMPDIR
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ["GIT_CONFIG_GLOBAL"] = str(_SANDBOX / "home" / ".gitconfig")
os.environ.update(
    GIT_AUTHOR_NAME="medpipe tests",
    GIT_AUTHOR_EMAIL="tests@medpipe.invalid",
    GIT_COMMITTER_NAME="medpipe tests",
    GIT_COMMITTER_EMAIL="tests@medpipe.invalid",
)

from pipeline import configure_offline  # noqa: E402

configure_offline()  # as the command and the flows do, before any tool loads
from tests.helpers import TINY_PATIENTS, TINY_SIZE, write_params  # noqa: E402

# Registered before Prefect's own exit hooks, so it runs after them (atexit is last-in, first-out).
atexit.register(shutil.rmtree, _SANDBOX, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """No MLflow store URI left in os.environ by an earlier test or fixture: mlflow.set_tracking_uri exports it
    there for child processes, and medpipe honours MLFLOW_TRACKING_URI. It is removed before any fixture of
    this test is set up, module-scoped ones included (a function-scoped fixture came too late for them: the
    CI of d66b402 and of 05d43c0 had test_mlflow_server's flows and the work pool's deployment register into
    another test's store), so no flow or subprocess of a test uses another test's store."""
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(variable, None)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The built-in synthetic set, tiny: read-only by convention (copy before changing it)."""
    from pipeline.data import synthesize

    root = tmp_path_factory.mktemp("tiny") / "data"
    synthesize(root, TINY_PATIENTS, TINY_SIZE, seed=1)
    return root


@pytest.fixture
def project(tmp_path, tiny_data) -> Path:
    """A temporary project folder: tiny params.yaml and a copy of the tiny data under data/."""
    shutil.copytree(tiny_data, tmp_path / "data")
    write_params(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def prefect_harness():
    """One real Prefect test server for the whole session (it costs ~12 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


# The longest modules first (longest-processing-time first), so that `make test`'s two xdist workers,
# which take a module at a time in collection order, end together instead of one waiting on the other.
# Seconds: rough, `--durations` of a busy `make test` run scaled by 1365/2011 (an idle one); the order in a module
# is kept (the fault chain and the module-scoped projects need it).
LONGEST_FIRST = (
    "tests/flows/test_retraining.py",  # ~560 s (two runs at once, reproduce, dvc repro)
    "tests/faults/test_kill_points.py",  # ~470 s
    "tests/flows/test_training_flow.py",  # ~180 s
    "tests/flows/test_jax_backend.py",  # ~170 s (a JAX run killed and resumed, served, reproduced)
    "tests/pipeline/test_tune.py",  # ~200 s (five medpipe tune processes, one killed)
    "tests/flows/test_serving.py",  # ~170 s
    "tests/flows/test_work_pool.py",  # ~145 s
    "tests/flows/test_promotion.py",  # ~130 s
    "tests/flows/test_schedule.py",  # ~110 s
    "tests/flows/test_mlflow_server.py",  # ~90 s
    "tests/flows/test_bad_input.py",  # ~90 s
    "tests/flows/test_real_data.py",  # ~80 s
    "tests/pipeline/test_cli.py",  # ~75 s
    "tests/pipeline/test_train.py",  # ~65 s
    "tests/pipeline/test_backend.py",  # ~65 s (three processes on JAX)
    "tests/flows/test_privacy.py",
    "tests/pipeline/test_explain.py",
    "tests/flows/test_dask.py",
    "tests/flows/test_dvc_lineage.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
