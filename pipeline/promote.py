"""Promotion gate: a model version becomes `champion` only when it beats the current one.

Candidate and champion are scored on the same test images, each through its own preprocessing;
versions of different tasks (other classes) are never compared. Alias changes are planned first and
journaled on the registered model (`medpipe.alias_journal`), so a crash between two alias writes is
finished by the next medpipe command; at every moment the champion is a complete version and the
rollback target (@previous) exists. Callers hold the project lock (pipeline.lock) around them.
"""

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.config import LOWER_IS_BETTER, PIXEL_FIELDS, Params, PromoteParams, Workspace
from pipeline.errors import MedpipeError
from pipeline.register import RegisterResult
from pipeline.registry import aliases_of

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
JOURNAL = "medpipe.alias_journal"


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
        """The alias the candidate ended with: champion or challenger.

        Returns:
            CHAMPION when promoted, else CHALLENGER.
        """
        return CHAMPION if self.promoted else CHALLENGER

    def markdown(self) -> str:
        """The decision for people (a Prefect artifact).

        Returns:
            A Markdown heading with the version and alias, and one bullet per reason.
        """
        return (
            f"# Promotion of version {self.version}: @{self.alias}\n\n"
            + "\n".join(f"- {r}" for r in self.reasons)
            + "\n"
        )


def _better(metric: str, a: float, b: float) -> float:
    """How much better `a` is than `b` on `metric` (positive: better; lower-is-better metrics flipped)."""
    return b - a if metric in LOWER_IS_BETTER else a - b


def decide(candidate: dict[str, float], champion: dict[str, float] | None, pp: PromoteParams) -> tuple[bool, list[str]]:
    """Apply the gate: floors for a first model; else primary metric gain >= margin and guards within tolerance.

    Args:
        candidate: The candidate's test metrics.
        champion: The champion's on the same images, or None when there is no champion.
        pp: The gate's params.

    Returns:
        Whether the candidate wins, and the reasons.
    """
    if champion is None:
        misses = [
            f"{m} {candidate[m]:.3f} misses the floor {f}"
            for m, f in pp.floors.items()
            if _better(m, candidate[m], f) < 0
        ]
        cleared = ", ".join(
            f"{m} {candidate[m]:.3f} {'<=' if m in LOWER_IS_BETTER else '>='} {f:g}" for m, f in pp.floors.items()
        )
        return not misses, misses or [
            f"first model: clears the floors ({cleared})" if cleared else "first model: no floors set (promote.floors)"
        ]
    gain = _better(pp.metric, candidate[pp.metric], champion[pp.metric])
    reasons = [
        f"{pp.metric} {candidate[pp.metric]:.4f} vs champion {champion[pp.metric]:.4f} "
        f"({gain:+.4f} better, margin {pp.margin})"
    ]
    ok = gain > 0 and gain >= pp.margin
    for metric, tolerance in pp.guards.items():
        drop = -_better(metric, candidate[metric], champion[metric])
        if drop > tolerance:
            ok = False
            reasons.append(f"guard {metric} worse by {drop:.4f} > tolerance {tolerance}")
    return ok, reasons


@dataclass(frozen=True)
class TestSplit:
    """The workspace's test images: uint8 pixels as prepared, labels, source files, and the classes."""

    x: np.ndarray
    y: np.ndarray
    files: list
    classes: list[str]
    pixel_params: dict


def test_split(params: Params, ws: Workspace) -> TestSplit:
    """The prepared test split of the workspace (one-line error when it has not been prepared).

    Args:
        params: The project's params (the pixel-affecting preprocess fields are recorded).
        ws: The workspace (reads outputs/preprocess and outputs/validate/splits.csv).

    Returns:
        The test pixels, labels, source files, classes and pixel params.

    Raises:
        MedpipeError: The test split has not been prepared.
    """
    from pipeline import preprocess, validate
    from pipeline.shards import Shards

    try:
        prepared, validated = preprocess.load_result(ws), validate.load_result(ws)
        test = Shards(prepared.folder, "test")
        x = test.read()
        table = validated.split_table()
    except (MedpipeError, OSError, KeyError, ValueError):
        raise MedpipeError(
            ws.out,
            "no prepared test split: run `medpipe run`, or `medpipe stage validate` and `medpipe stage preprocess`",
        ) from None
    files = [ws.data_root / p for p in table.loc[table["split"] == "test", "path"]]
    pixels = params.preprocess.model_dump(mode="json", include=set(PIXEL_FIELDS))
    return TestSplit(x, test.labels, files, list(prepared.classes), pixels)


def score(classifier, split: TestSplit) -> dict[str, float]:
    """A registered classifier's test metrics: on the prepared pixels when it was trained with the same
    preprocessing, else on the same source images through its own preprocessing.

    Args:
        classifier: A loaded registered classifier (model, classes, pp).
        split: The workspace's test split.

    Returns:
        Its classification metrics on the test split.
    """
    from pipeline.metrics import classification_metrics
    from pipeline.model import predict
    from pipeline.preprocess import prepare_image

    if classifier.pp.model_dump(mode="json", include=set(PIXEL_FIELDS)) == split.pixel_params:
        x = split.x
    else:
        x = np.stack([prepare_image(f, classifier.pp) for f in split.files])
    return classification_metrics(split.y, predict(classifier.model, x))


def apply_plan(client, name: str, plan: dict) -> None:
    """Journal an alias change on the registered model, carry it out, then clear the journal.

    Args:
        client: An MlflowClient.
        name: The registered model.
        plan: `{"set": {alias: version} in write order, "delete": [alias], "tags": {version: {key: value}}}`.
    """
    client.set_registered_model_tag(name, JOURNAL, json.dumps(plan))
    _execute(client, name, plan)
    client.delete_registered_model_tag(name, JOURNAL)


def _execute(client, name: str, plan: dict) -> None:
    """Carry out an alias plan (idempotent: a journaled plan is simply run again) and sync the tags."""
    from mlflow.exceptions import MlflowException

    from pipeline import faults

    before = aliases_of(client, name)
    for i, (alias, version) in enumerate(plan["set"].items()):
        if i:
            faults.point("promote.aliases")
        client.set_registered_model_alias(name, alias, str(version))
    for alias in plan["delete"]:
        try:
            client.delete_registered_model_alias(name, alias)
        except MlflowException:
            pass  # already gone
    for version, tags in plan["tags"].items():
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, value)
    after = aliases_of(client, name)
    for version in {*before.values(), *after.values(), *map(int, plan["tags"])}:
        mine = sorted(a for a, v in after.items() if v == version)
        client.set_model_version_tag(name, str(version), "medpipe.aliases", ",".join(mine) or "none")


def recover(client, name: str, say: Callable[[str], None] = log.info) -> bool:
    """Finish an alias change a crash interrupted (the journal on the registered model); True if one was.

    Args:
        client: An MlflowClient.
        name: The registered model.
        say: Where the message about a finished change goes.

    Returns:
        True when an interrupted change was finished.
    """
    from mlflow.exceptions import MlflowException

    try:
        journal = client.get_registered_model(name).tags.get(JOURNAL)
    except MlflowException:
        return False
    if not journal:
        return False
    plan = json.loads(journal)
    _execute(client, name, plan)
    client.delete_registered_model_tag(name, JOURNAL)
    say(f"finished an interrupted alias change of {name}: {plan['set']}")
    return True


def _version(client, name: str, version: int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise MedpipeError(f"{name} version {version}", "no such registered model version") from None


def _load(params: Params, ws: Workspace, version: int):
    from pipeline.registry import load_classifier, model_uri

    return load_classifier(model_uri(params.register_, version), params.register_, ws.base, params.preprocess)[0]


def promote(params: Params, ws: Workspace, version: int, force: bool = False) -> Decision:
    """Score `version` and the champion on the workspace's test split; move aliases by the gate.

    Args:
        params: The project's params (gate settings in `promote`).
        ws: The workspace whose prepared test split both are scored on.
        version: The candidate version.
        force: Make it champion whatever the gate says (never across tasks).

    Returns:
        The decision, with the aliases after it.
    """
    import mlflow

    from pipeline import faults
    from pipeline.registry import PENDING, is_complete, setup_tracking, signature_conflict, version_signature

    setup_tracking(params.register_, ws.base)
    client, name = mlflow.MlflowClient(), params.register_.model_name
    recover(client, name)
    candidate_mv = _version(client, name, version)
    if not is_complete(candidate_mv):
        raise MedpipeError(
            f"{name} version {version}",
            "its registration is incomplete (tags missing): it cannot be gated; train it again",
        )
    faults.point("promote.start")
    split = test_split(params, ws)
    candidate = score(_load(params, ws, version), split)
    for _ in range(3):  # re-score if the champion changed meanwhile (another machine on a shared registry)
        current = aliases_of(client, name).get(CHAMPION)
        champion = None
        if current not in (None, version):
            conflict = signature_conflict(
                version_signature(candidate_mv), version_signature(_version(client, name, current)), current, name
            )
            if conflict:
                if candidate_mv.tags.get("medpipe.promotion") == PENDING:
                    client.set_model_version_tag(name, str(version), "medpipe.promotion", "refused: another task")
                raise MedpipeError(f"{name} version {version}", f"not compared with the champion: it {conflict}")
            champion = score(_load(params, ws, current), split)
        if aliases_of(client, name).get(CHAMPION) == current:
            break
    ok, reasons = decide(candidate, champion, params.promote) if current != version else (False, ["already champion"])
    decision = Decision(
        version,
        ok or (force and current != version) or current == version,
        reasons,
        candidate,
        champion,
        current,
        force and not ok and current != version,
    )
    outcome = ("promoted (forced)" if decision.forced else "promoted") if decision.promoted else "challenger"
    if current == version:
        outcome = candidate_mv.tags.get("medpipe.promotion", "promoted")
        outcome = "promoted" if outcome == PENDING else outcome
    plan: dict = {
        "set": {},
        "delete": [],
        "tags": {str(version): {"medpipe.promotion": outcome, "medpipe.promotion_reasons": "; ".join(reasons)[:4000]}},
    }
    if decision.promoted and current != version:
        if current is not None:
            plan["set"][PREVIOUS] = current  # first: a rollback target exists at every moment
        plan["set"][CHAMPION] = version
        if aliases_of(client, name).get(CHALLENGER) == version:
            plan["delete"].append(CHALLENGER)
    elif current != version:
        plan["set"][CHALLENGER] = version
    apply_plan(client, name, plan)
    decision.aliases = aliases_of(client, name)
    return decision


def rollback(params: Params, ws: Workspace) -> dict[str, int | None]:
    """champion <- previous (and previous <- the demoted champion, so a second rollback undoes it).

    Args:
        params: The project's params.
        ws: The workspace.

    Returns:
        The versions now at champion and previous (None: no previous).

    Raises:
        MedpipeError: There is no @previous version.
    """
    import mlflow

    from pipeline.registry import setup_tracking

    setup_tracking(params.register_, ws.base)
    client, name = mlflow.MlflowClient(), params.register_.model_name
    recover(client, name)
    aliases = aliases_of(client, name)
    if PREVIOUS not in aliases:
        raise MedpipeError(name, "no @previous version to roll back to")
    previous, current = aliases[PREVIOUS], aliases.get(CHAMPION)
    plan: dict = {
        "set": {CHAMPION: previous},
        "delete": [],
        "tags": {str(previous): {"medpipe.promotion": "champion again (rollback)"}},
    }
    if current is not None and current != previous:
        plan["set"][PREVIOUS] = current
        plan["tags"][str(current)] = {"medpipe.promotion": "rolled back"}
    if aliases.get(CHALLENGER) == previous:
        plan["delete"].append(CHALLENGER)
    apply_plan(client, name, plan)
    after = aliases_of(client, name)
    return {CHAMPION: after[CHAMPION], PREVIOUS: after.get(PREVIOUS)}


def run_step(params: Params, ws: Workspace, registered: RegisterResult) -> Decision:
    """Gate the version the register step just made; the decision goes to outputs/promote/decision.json.

    Args:
        params: The project's params.
        ws: The workspace (the prepared test split; writes outputs/promote).
        registered: The register step's result (the version to gate).

    Returns:
        The decision.
    """
    decision = promote(params, ws, registered.version)
    write_decision(decision, ws)
    return decision


def load_result(ws: Workspace) -> Decision:
    """Read back the decision the promote step wrote (for a step run on its own, e.g. by DVC).

    Args:
        ws: The workspace (reads outputs/promote/decision.json).

    Returns:
        The Decision run_step returned.

    Raises:
        MedpipeError: No version has been gated from this workspace.
    """
    from pipeline.outputs import read_result

    return read_result(ws.out / "promote" / "decision.json", "promote", lambda raw: Decision(**raw))


def write_decision(decision: Decision, ws: Workspace) -> None:
    """outputs/promote/decision.json: the decision, its reasons and both sides' metrics.

    Args:
        decision: The gate's decision.
        ws: The workspace.
    """
    from pipeline.outputs import write_text

    write_text(ws.step_dir("promote") / "decision.json", json.dumps(asdict(decision), indent=2) + "\n")


def gate_version(
    params: Params, ws: Workspace, version: int, force: bool = False, say: Callable[[str], None] = log.info
) -> Decision:
    """`medpipe promote`: under the project lock, close runs a killed process left RUNNING, bring the test
    split up to date (validate and preprocess, both cached when nothing changed) and gate `version`.

    Args:
        params: The project's params.
        ws: Its workspace.
        version: The registered version to gate.
        force: Make it champion whatever the gate says.
        say: Where waiting and clean-up messages go.

    Returns:
        The decision (also written to outputs/promote).

    Raises:
        DataError: The current data fail validation.
    """
    from pipeline import preprocess, validate
    from pipeline.autoparams import resolve
    from pipeline.lock import project_lock
    from pipeline.registry import close_orphaned_runs

    params, notes = resolve(params, ws.data_root)
    for note in notes:
        say(note)
    with project_lock(ws.base, say=say):
        close_orphaned_runs(params.register_, ws.base, say=say)
        report = validate.run_step(params, ws)
        if not report.success:
            raise validate.failure(report, ws.data_root)
        preprocess.run_step(params, ws, report)
        decision = promote(params, ws, version, force)
        write_decision(decision, ws)
    return decision
