"""The data steps on Dask: validate (its image scan in chunks) and preprocess (shard by shard) as Prefect
tasks on a `DaskTaskRunner`, when params.yaml's `dask` section (or $MEDPIPE_DASK_ADDRESS) asks for it."""

import logging
import os
import socket
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect_dask import DaskTaskRunner

from pipeline._env import verbose
from pipeline.config import DaskParams, Params, Workspace
from pipeline.errors import ConfigError
from pipeline.preprocess import PreprocessResult
from pipeline.steps import step
from pipeline.validate import ValidationReport

ADDRESS_ENV = "MEDPIPE_DASK_ADDRESS"
PRELOAD = ["prefect", "pipeline.scan", "pipeline.preprocess"]  # imported as workers start, not in the first task


def scheduler_address(dp: DaskParams) -> str | None:
    """The running Dask scheduler asked for: $MEDPIPE_DASK_ADDRESS, else params dask.address.

    Args:
        dp: The dask params.

    Returns:
        The scheduler address, or None for none.
    """
    return os.environ.get(ADDRESS_ENV) or dp.address


def check_scheduler(dp: DaskParams, seconds: float = 5.0) -> None:
    """Fail fast, with a one-line ConfigError, when the scheduler asked for does not answer.

    Args:
        dp: The dask params.
        seconds: How long to wait for the connection.

    Raises:
        ConfigError: No scheduler answers at the address asked for.
    """
    address = scheduler_address(dp)
    if not address:
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except (OSError, ValueError) as err:
        source = ADDRESS_ENV if os.environ.get(ADDRESS_ENV) else "dask.address"
        raise ConfigError(source, f"no Dask scheduler answers at {address} ({err.__class__.__name__})") from None


def dask_runner(dp: DaskParams) -> DaskTaskRunner | None:
    """The task runner `dp` asks for: a running scheduler ($MEDPIPE_DASK_ADDRESS, else `address`), a
    LocalCluster of `workers` single-threaded processes on 127.0.0.1, or None (no Dask).

    Args:
        dp: The dask params.

    Returns:
        The DaskTaskRunner, or None when no Dask is asked for.
    """
    address = scheduler_address(dp)
    if address:
        return DaskTaskRunner(address=address)
    if not dp.workers:
        return None
    # Without PREFECT_API_URL every worker would start a temporary Prefect server of its own.
    with get_client(sync_client=True) as client:
        env = {"PREFECT_API_URL": str(client.api_url).rstrip("/")}
    if not verbose():
        logging.getLogger("distributed").setLevel(logging.WARNING)  # Dask's start/stop chatter, not the tasks' logs
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": dp.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
            "env": env,
            "preload": PRELOAD,
        }
    )


@contextmanager
def trial_executor(dp: DaskParams, parallel: int) -> Iterator[Executor]:
    """Where `medpipe tune` trains `parallel` trials at a time: the running scheduler asked for
    ($MEDPIPE_DASK_ADDRESS, else `dask.address`), else a LocalCluster of `parallel` processes on 127.0.0.1,
    each with its share of the cores for TensorFlow (`TF_NUM_INTRAOP_THREADS`).

    Args:
        dp: The dask params.
        parallel: Trials at a time (tune.parallel).

    Yields:
        A concurrent.futures Executor on the cluster's workers.

    Raises:
        ConfigError: No scheduler answers at the address asked for.
    """
    import dask
    from dask.system import CPU_COUNT
    from distributed import Client, LocalCluster

    check_scheduler(dp)
    quiet = logging.DEBUG if verbose() else logging.WARNING
    logging.getLogger("distributed").setLevel(quiet)
    address = scheduler_address(dp)
    if address:  # its workers: one thread each (`dask worker --nthreads 1`), the project's paths shared
        with Client(address) as client:
            yield client.get_executor()
        return
    threads = str(max(1, CPU_COUNT // parallel))  # CPU_COUNT honours affinity and cgroup limits
    # A trial whose worker died is not run again (it would train under the same trial number twice), and no
    # worker is killed for its memory: a trial that fits alone is not stopped for running beside another.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=parallel,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=0,
            silence_logs=quiet,
            env={"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1"},
        )
    with cluster, Client(cluster) as client:
        yield client.get_executor()


def on_task_runner(fn, items: list) -> list:
    """Map `fn` over `items` as Prefect tasks on the running flow's task runner; results in order.

    Args:
        fn: The function mapped (its name names the tasks).
        items: Its arguments, one per task.

    Returns:
        The results, in the order of `items`.
    """
    # Prefect's overloads of task() omit task(fn, **options), which it accepts at runtime.
    futures = task(fn, name=fn.__name__.replace("_", "-"), cache_policy=NO_CACHE).map(items)  # type: ignore[attr-defined]
    return [future.result() for future in futures]


@flow(name="medpipe-data", log_prints=True, validate_parameters=False)
def data_flow(params: Params, ws: Workspace) -> tuple[ValidationReport, PreprocessResult | None]:
    """Validate and, if the data pass, preprocess, with the scan chunks and the shards as tasks on this
    flow's task runner (each decoding on one thread: the cluster's workers are the parallelism).

    Args:
        params: The run's params.
        ws: The workspace.

    Returns:
        The validation report, and the preprocess result (None when validation failed).
    """
    report = step("validate").run(params, ws, mapper=on_task_runner)
    if not report.success:
        return report, None
    one_thread = params.model_copy(update={"preprocess": params.preprocess.model_copy(update={"workers": 1})})
    return report, step("preprocess").run(one_thread, ws, report, mapper=on_task_runner)


def run_on_dask(params: Params, ws: Workspace) -> tuple[ValidationReport, PreprocessResult | None] | None:
    """The data steps on the Dask cluster params ask for, as a subflow; None when they ask for none.

    Args:
        params: The run's params.
        ws: The workspace.

    Returns:
        What data_flow returns, or None when the params ask for no Dask.
    """
    runner = dask_runner(params.dask)
    if runner is None:
        return None
    print(f"data steps on Dask: {scheduler_address(params.dask) or f'{params.dask.workers} local workers'}")
    # with_options wants a TaskRunner[PrefectFuture[Any]] (invariant); DaskTaskRunner has its own future type.
    return data_flow.with_options(task_runner=runner)(params, ws)  # type: ignore[arg-type]
