"""Promotion gate: a model version becomes `champion` only when it beats the current one.

Candidate and champion are evaluated on the same test split; aliases move only after that.
"""

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.config import Params, PromoteParams, Workspace

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


@dataclass
class Decision:
    """Whether the candidate is promoted, why, and the metrics both sides scored on the same split."""

    version: int
    promoted: bool
    reasons: list[str]
    candidate: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: int | None = None
    forced: bool = False
    aliases: dict[str, int] = field(default_factory=dict)

    @property
    def alias(self) -> str:
        """The alias the candidate ended with: champion or challenger."""
        return CHAMPION if self.promoted else CHALLENGER

    def markdown(self) -> str:
        """The decision for people (a Prefect artifact)."""
        return (f"# Promotion of version {self.version}: @{self.alias}\n\n"
                + "\n".join(f"- {r}" for r in self.reasons) + "\n")


def decide(candidate: dict[str, float], champion: dict[str, float] | None, pp: PromoteParams) -> tuple[bool, list[str]]:
    """Apply the gate: floors for a first model; else primary metric gain >= margin and guards within tolerance."""
    if champion is None:
        misses = [f"{m} {candidate[m]:.3f} < floor {f}" for m, f in pp.floors.items() if candidate[m] < f]
        return not misses, misses or [f"first model: clears the floors {pp.floors}"]
    gain = candidate[pp.metric] - champion[pp.metric]
    reasons = [f"{pp.metric} {candidate[pp.metric]:.4f} vs champion {champion[pp.metric]:.4f} "
               f"({gain:+.4f}, margin {pp.margin})"]
    ok = gain > 0 and gain >= pp.margin
    for metric, tolerance in pp.guards.items():
        drop = champion[metric] - candidate[metric]
        if drop > tolerance:
            ok = False
            reasons.append(f"guard {metric} drops {drop:.4f} > tolerance {tolerance}")
    return ok, reasons


def _version_metrics(name: str, version: int, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from pipeline.evaluate import classification_metrics, predict
    from pipeline.registry import load_keras

    model = load_keras(f"models:/{name}/{version}")
    return classification_metrics(y, predict(model, x))


def _champion(client, name: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def promote(params: Params, ws: Workspace, version: int, force: bool = False) -> Decision:
    """Evaluate `version` and the champion on the workspace's test split; move aliases by the gate."""
    import mlflow

    from pipeline.preprocess import Shards
    from pipeline.registry import setup_tracking

    setup_tracking(params.register_, ws.base)
    client, name = mlflow.MlflowClient(), params.register_.model_name
    test = Shards(ws.out / "preprocess", "test")
    x, y = test.read(), test.labels  # uint8
    current = _champion(client, name)
    candidate = _version_metrics(name, version, x, y)
    champion = _version_metrics(name, current, x, y) if current not in (None, version) else None
    ok, reasons = decide(candidate, champion, params.promote) if current != version else (False, ["already champion"])
    decision = Decision(version, ok or (force and current != version), reasons, candidate, champion, current, force)
    if decision.promoted:
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(current))
        client.set_registered_model_alias(name, CHAMPION, str(version))
    elif current != version:
        client.set_registered_model_alias(name, CHALLENGER, str(version))
    outcome = "promoted" + (" (forced)" if force and not ok else "") if decision.promoted else "challenger"
    client.set_model_version_tag(name, str(version), "medpipe.promotion", outcome)
    client.set_model_version_tag(name, str(version), "medpipe.promotion_reasons", "; ".join(reasons)[:4000])
    decision.aliases = {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}
    return decision


def rollback(params: Params, ws: Workspace) -> dict[str, int]:
    """champion <- previous (and previous <- the demoted champion, so a second rollback undoes it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.errors import MedpipeError
    from pipeline.registry import setup_tracking

    setup_tracking(params.register_, ws.base)
    client, name = mlflow.MlflowClient(), params.register_.model_name
    try:
        previous = client.get_model_version_by_alias(name, PREVIOUS).version
    except MlflowException:
        raise MedpipeError(name, "no @previous version to roll back to") from None
    current = _champion(client, name)
    client.set_registered_model_alias(name, CHAMPION, previous)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, str(current))
    return {CHAMPION: int(previous), PREVIOUS: current}


def run_step(params: Params, ws: Workspace) -> Decision:
    """Gate the version the register step just made; the decision goes to outputs/promote/decision.json."""
    version = json.loads((ws.out / "register" / "model_version.json").read_text())["version"]
    decision = promote(params, ws, version)
    write_decision(decision, ws)
    return decision


def write_decision(decision: Decision, ws: Workspace) -> None:
    """outputs/promote/decision.json: the decision, its reasons and both sides' metrics."""
    (ws.step_dir("promote") / "decision.json").write_text(json.dumps(asdict(decision), indent=2) + "\n")
