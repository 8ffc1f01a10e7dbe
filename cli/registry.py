"""`medpipe promote`, `rollback` and `reproduce`: the registry's aliases and a version's lineage."""

from pathlib import Path
from typing import Annotated

import typer

from cli.common import ParamsOpt, console, say, show_library_log


def promote(
    version: Annotated[int, typer.Option(help="Model version to gate.")],
    force: Annotated[bool, typer.Option(metavar="", help="Make it champion whatever the gate says.")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Gate one version against @champion on the current test split; move aliases by the result.

    Waits for a running medpipe run of this project; prepares the test split first if the data changed.
    """
    from pipeline.config import Workspace, load_params
    from pipeline.promote import gate_version
    from pipeline.validate import counts_text

    show_library_log()
    p = load_params(params)
    decision = gate_version(p, Workspace.create(p, params), version, force, say=say)
    console.print(
        f"version {version}: {decision.alias}"
        + (" (forced)" if decision.forced else "")
        + f" — {'; '.join(decision.reasons)}; aliases {counts_text(decision.aliases)}",
        soft_wrap=True,
    )


def rollback(params: ParamsOpt = Path("params.yaml")) -> None:
    """Make @previous the champion again (the demoted one becomes @previous)."""
    from pipeline import promote as gate
    from pipeline.config import Workspace, load_params
    from pipeline.lock import project_lock

    show_library_log()
    p = load_params(params)
    ws = Workspace.create(p, params)
    with project_lock(ws.base, say=say):
        console.print(f"aliases now {gate.rollback(p, ws)}")


def reproduce(
    version: Annotated[int, typer.Option(help="Registered model version to rebuild.")],
    params: ParamsOpt = Path("params.yaml"),
    keep: Annotated[
        Path | None, typer.Option(help="Rebuild in this (empty) folder and keep it, instead of a temporary one.")
    ] = None,
) -> None:
    """Rebuild a model version from its lineage (git commit, DVC data version, params) and check that
    weights and metrics are identical; exit 0 if they are, 1 with the differences if not."""
    from pipeline.config import Workspace, load_params
    from pipeline.reproduce import reproduce as rebuild

    show_library_log()  # one line per rebuilt step: a rebuild takes minutes
    p = load_params(params)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    result = rebuild(p, Workspace.create(p, params), version, keep.resolve() if keep else None)
    for note in result.notes:
        console.print(f"note: {note}", soft_wrap=True)
    console.print(
        f"version {version} rebuilt from commit {result.commit[:12]}: weights "
        f"{'identical' if result.same_weights else 'DIFFERENT'}, "
        f"{'all metrics identical' if not result.differences else f'{len(result.differences)} metrics differ'}",  # noqa: E501
        soft_wrap=True,
    )
    for name, (was, now) in result.differences.items():
        console.print(f"  {name}: original {was!r}, rebuilt {now!r}")
    if not result.identical:
        raise typer.Exit(1)
