"""The promotion gate as a flow: run after every training run, or on its own for any version."""

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline import promote
from pipeline.autoparams import resolve
from pipeline.config import Params, Workspace, load_params
from pipeline.lock import project_lock

# task(fn, **options): accepted by Prefect at runtime, not declared by its typed overloads of task().
gate_task = task(promote.promote, name="promotion-gate", cache_policy=NO_CACHE)  # type: ignore[call-overload]


@flow(name="medpipe-promotion", log_prints=True)
def promotion_flow(params: Params, ws: Workspace, version: int, force: bool = False) -> promote.Decision:
    """Evaluate `version` and the current @champion on the same test split; move the aliases by the gate.

    Args:
        params: The project's params.
        ws: The workspace.
        version: The registered version to gate.
        force: Make it champion whatever the gate says.

    Returns:
        The decision (also written to outputs/promote and published as a Markdown artifact).
    """
    decision = gate_task(params, ws, version, force)
    promote.write_decision(decision, ws)
    create_markdown_artifact(
        decision.markdown(), key="medpipe-promotion", description=f"version {decision.version}: {decision.alias}"
    )
    print(f"version {decision.version}: @{decision.alias} ({'; '.join(decision.reasons)})")
    return decision


@flow(name="medpipe-promote-version", log_prints=True)
def promote_version(version: int, params_file: str = "params.yaml", force: bool = False) -> promote.Decision:
    """The gate for one registered version, e.g. from a deployment or `prefect deployment run`.

    Args:
        version: The registered version to gate.
        params_file: The params file.
        force: Make it champion whatever the gate says.

    Returns:
        The decision.
    """
    params = load_params(Path(params_file))
    ws = Workspace.create(params, Path(params_file))
    params = resolve(params, ws.data_root).params  # labels and colour `auto`, as the training runs decide them
    with project_lock(ws.base):  # never beside a training run's gate or a `medpipe promote` of this project
        return promotion_flow(params, ws, version, force)
