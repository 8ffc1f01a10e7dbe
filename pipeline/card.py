"""The card step: a model card for each registered version, after "Model Cards for Model Reporting"
(Mitchell et al. 2019), as Markdown and one self-contained HTML page, logged with the version's run.

Its sections: model details and the promotion decision, intended and out-of-scope use (params `card`,
the authors' words), data (version, lineage, images per split and class, validation and leakage
findings), test metrics with 95% intervals, per-class results, calibration, subgroups (manifest
columns named by `evaluate.subgroups`), Grad-CAM examples and limitations (the authors' and measured).
"""

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.config import Params, Workspace
from pipeline.evaluate import EvaluateResult, number, subgroup_table
from pipeline.outputs import replace_dir
from pipeline.promote import Decision
from pipeline.register import RegisterResult
from pipeline.validate import ValidationReport

log = logging.getLogger(__name__)
MARKDOWN, HTML = "model_card.md", "model_card.html"
ARTIFACT = "model_card"  # the folder of the version's run holding both
TAG = "medpipe.model_card"  # version tag: the card's artifact path
FEW = 10  # a subgroup with fewer test images is named as too small to judge
HEADLINE = ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "sensitivity", "specificity")
_FIGURES = ("roc_pr", "confusion_matrix", "reliability", "training_curves")
_CAMS = 4  # Grad-CAM examples shown


@dataclass(frozen=True)
class CardResult:
    """The card written for a version: its Markdown and HTML files."""

    version: int
    markdown: Path
    html: Path


@dataclass(frozen=True)
class CardFacts:
    """Everything a card states, gathered from the steps' results (see `model_card`)."""

    name: str
    version: int
    run_id: str
    data_name: str
    model: str
    size: int
    decision: Decision
    lineage: dict[str, str]
    validated: ValidationReport
    splits: pd.DataFrame
    metrics: dict[str, float]
    subgroups: list[dict]
    figures: list[str]  # paths relative to the card's folder
    words: dict[str, str]  # params `card`: intended_use, out_of_scope, limitations


def counts_table(splits: pd.DataFrame) -> list[str]:
    """Markdown lines: images per class (rows) and split (columns), with totals.

    Args:
        splits: The split table (label, split).

    Returns:
        The table's lines.
    """
    order = [s for s in ("train", "val", "test") if s in set(splits["split"])]
    table = pd.crosstab(splits["label"], splits["split"]).reindex(columns=order, fill_value=0)
    lines = ["| class | " + " | ".join(order) + " | all |", "|---" * (len(order) + 2) + "|"]
    lines += [
        f"| {c} | " + " | ".join(str(int(v)) for v in row) + f" | {int(row.sum())} |" for c, row in table.iterrows()
    ]
    totals = [int(table[s].sum()) for s in order]
    return [*lines, "| **all** | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |"]


def limitations(facts: CardFacts) -> list[str]:
    """The limitations the card can measure, after the authors' own (params `card.limitations`).

    Args:
        facts: The card's facts.

    Returns:
        One sentence per limitation.
    """
    m, out = facts.metrics, [facts.words["limitations"]] if facts.words["limitations"] else []
    n_test = int((facts.splits["split"] == "test").sum())
    out.append(
        f"Tested on {n_test} images of one data set, split from the training data: no external validation. "
        f"The 95% interval of test ROC-AUC is [{number(m.get('test_roc_auc_ci_low'))}, "
        f"{number(m.get('test_roc_auc_ci_high'))}]."
    )
    near = facts.validated.near_duplicates
    if near.get("n_cross_split"):
        clean = ""
        if "test_clean_n" in m:
            clean = (
                f"; on the {int(m['test_clean_n'])} test images without one, ROC-AUC "
                f"{number(m.get('test_clean_roc_auc'))}"
            )
        out.append(f"{near['n_cross_split']} near-duplicate group(s) cross splits{clean}.")
    small = [f"{r['column']}={r['group']} ({r['n']})" for r in facts.subgroups if r["n"] < FEW]
    if small:
        out.append(f"Subgroups with fewer than {FEW} test images, too few to judge: {', '.join(small)}.")
    if facts.validated.warnings:
        out.append("Validation warned: " + "; ".join(c.name for c in facts.validated.warnings) + ".")
    if facts.lineage.get("medpipe.git_dirty") == "true":
        out.append("Trained from uncommitted code: its exact code cannot be checked out again.")
    return out


def semi_words(tag: str) -> str:
    """The `medpipe.semi` tag in the card's words.

    Args:
        tag: The tag, e.g. `pseudo_label: 4 of 10 pool images at >= 0.95 (round 1)`.

    Returns:
        E.g. `pseudo-labelling: 4 of 10 pool images at >= 0.95 (round 1).`
    """
    method, _, rest = tag.partition(": ")
    return f"{'consistency training' if method == 'consistency' else 'pseudo-labelling'}: {rest}."


def label_lines(lineage: dict[str, str], validated: ValidationReport) -> list[str]:
    """The card's lines on where the labels came from and what became of the unlabelled images.

    Args:
        lineage: The version's `medpipe.` tags (label_sources, semi, pretrain).
        validated: The validate step's report (the unlabelled pool).

    Returns:
        Zero to two Markdown bullets.
    """
    lines = []
    if sources := lineage.get("medpipe.label_sources"):
        counts = ", ".join(part.replace("=", ": ") for part in sources.split(","))
        lines.append(f"- Labels by source (manifest `label_source`): {counts}.")
    if validated.n_unlabelled:
        semi, pretrain = lineage.get("medpipe.semi"), lineage.get("medpipe.pretrain")
        pool = validated.pool
        usable = f", {pool['usable']} usable" if pool else ""
        learnt = [semi_words(semi).removesuffix(".")] if semi else []
        learnt += ["seen without labels by the encoder's self-supervised pre-training"] if pretrain else []
        lines.append(
            f"- Unlabelled images: {validated.n_unlabelled}{usable}, in no split; "
            + ("; ".join(learnt) if learnt else "not learnt from")
            + "."
        )
    return lines


def start_lines(lineage: dict[str, str]) -> list[str]:
    """The card's lines on what the model started from: self-supervised pre-training, a weights file.

    Args:
        lineage: The version's `medpipe.` tags (pretrain, init_weights).

    Returns:
        Zero to two Markdown bullets.
    """
    lines = []
    if pretrain := lineage.get("medpipe.pretrain"):
        lines.append(f"- Encoder pre-trained on unlabelled views before supervised training: {pretrain}.")
    if weights := lineage.get("medpipe.init_weights"):
        lines.append(f"- Started from `model.weights`: {weights}.")
    return lines


def card_markdown(facts: CardFacts) -> str:
    """The model card as Markdown (images linked relative to the card's folder).

    Args:
        facts: What the card states.

    Returns:
        The Markdown text.
    """
    m, d, lin = facts.metrics, facts.decision, facts.lineage
    classes = sorted(set(facts.splits["label"]))
    lines = [
        f"# Model card: {facts.name} version {facts.version}",
        "",
        f"**{facts.model}** classifying {', '.join(classes)} from {facts.validated.color or 'gray'} images at "
        f"{facts.size}x{facts.size} px. MLflow run `{facts.run_id}`. Promotion: **@{d.alias}**"
        + (" (forced)" if d.forced else "")
        + ".",
        "",
        "## Intended use",
        "",
        facts.words["intended_use"],
        "",
        "## Out of scope",
        "",
        facts.words["out_of_scope"],
        "",
        "## Data",
        "",
        f"- Data set `{facts.data_name}`, version `{lin.get('medpipe.data_md5', 'unknown')}` "
        f"({lin.get('medpipe.data_files', '?')} files); "
        f"code `{lin.get('medpipe.git_commit', 'unknown')}`"
        + (" (uncommitted changes)" if lin.get("medpipe.git_dirty") == "true" else "")
        + f"; params `{lin.get('medpipe.params_md5', 'unknown')}`.",
        f"- Validation: {facts.validated.summary()}.",
    ]
    lines += label_lines(lin, facts.validated) + start_lines(lin)
    near = facts.validated.near_duplicates
    if near.get("enabled"):
        lines.append(
            f"- Leakage: {near.get('n_groups', 0)} near-duplicate group(s), {near.get('n_cross_split', 0)} across "
            f"splits (validate.near_duplicates.action: {near.get('action', '')}); {near.get('n_dropped', 0)} "
            "image(s) dropped."
        )
    lines += ["", *counts_table(facts.splits), "", "## Performance on the test split", ""]
    lines += ["| metric | test | 95% interval | validation |", "|---|---|---|---|"]
    for k in HEADLINE:
        ci = f"[{number(m[f'test_{k}_ci_low'])}, {number(m[f'test_{k}_ci_high'])}]" if f"test_{k}_ci_low" in m else ""
        lines.append(f"| {k} | {number(m.get(f'test_{k}'))} | {ci} | {number(m.get(f'val_{k}'))} |")
    if "threshold" in m:
        lines += [
            "",
            f"Operating threshold (chosen on validation): {m['threshold']:.3f}, giving test sensitivity "
            f"{number(m.get('test_sensitivity_at_threshold'))} and specificity "
            f"{number(m.get('test_specificity_at_threshold'))}.",
        ]
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [
        f"| {c} | "
        + " | ".join(number(m.get(f"test_{k}_{c}")) for k in ("precision", "recall", "f1"))
        + f" | {int(m.get(f'test_support_{c}', 0))} |"
        for c in classes
    ]
    lines += [
        "",
        "## Calibration",
        "",
        f"Expected calibration error {number(m.get('test_ece'))}, Brier score "
        f"{number(m.get('test_brier'))}, log loss {number(m.get('test_log_loss'))} (test).",
        "",
    ]
    lines += [f"![{Path(f).stem}]({f})" for f in facts.figures if "gradcam" not in f]
    lines += [
        "",
        *(subgroup_table(facts.subgroups) or ["## Subgroups (test)", "", "None named (evaluate.subgroups).", ""]),
    ]
    cams = [f for f in facts.figures if "gradcam" in f]
    if cams:
        lines += ["## Explanations (Grad-CAM)", "", "Where the model looked, on test images:", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in cams] + [""]
    lines += ["## Limitations", "", *(f"- {text}" for text in limitations(facts)), ""]
    lines += ["## Promotion decision", "", f"@{d.alias}:", "", *(f"- {r}" for r in d.reasons), ""]
    if d.champion:
        lines += [f"| metric | this version | champion (version {d.champion_version}) |", "|---|---|---|"]
        lines += [
            f"| {k} | {number(d.candidate.get(k))} | {number(d.champion.get(k))} |" for k in HEADLINE if k in d.champion
        ]
        lines.append("")
    return "\n".join(lines)


def _copy_figures(evaluated: EvaluateResult, folder: Path, classes: list[str]) -> list[str]:
    """The evaluation figures the card shows, copied under `folder/figures` (paths relative to folder)."""
    chosen = [p for name in _FIGURES for p in evaluated.plots if p.stem == name]
    cams = [p for p in evaluated.plots if p.parent.name == "gradcam"]  # <class>_<correct|wrong>_<source>...
    firsts = []
    for kind in ("wrong", "correct"):
        for c in classes:
            found = next((p for p in cams if p.name.startswith(f"{c}_{kind}_")), None)
            if found is not None:
                firsts.append(found)
    chosen += [*firsts, *(p for p in cams if p not in firsts)][:_CAMS]  # one per class and kind first
    out = []
    for path in chosen:
        sub = "figures/gradcam" if path.parent.name == "gradcam" else "figures"
        (folder / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / sub / path.name)
        out.append(f"{sub}/{path.name}")
    return out


def missing_inputs(params: Params, ws: Workspace, version: int) -> tuple | None:
    """What the card step needs for `version`, when a crash left that version without its card and this
    workspace still holds its outputs: its training run's (outputs/train), evaluation (the test metrics the
    run logged) and gate decision. The run that gates it or finds it up to date then writes the card.

    Args:
        params: The run's params (where MLflow is, the model's name).
        ws: The workspace.
        version: The registered version.

    Returns:
        (validated, evaluated, registered, decision) for `run_step`, or None: the version has its card, or
        the workspace's outputs are another version's.
    """
    import mlflow

    from pipeline import evaluate, promote, train, validate
    from pipeline.errors import MedpipeError
    from pipeline.registry import setup_tracking

    setup_tracking(params.register_, ws.base)
    client, name = mlflow.MlflowClient(), params.register_.model_name
    made = client.get_model_version(name, str(version))
    if TAG in made.tags or made.run_id is None:
        return None
    try:  # outputs/register may be older: a run killed right after registering never wrote it
        trained, decision = train.load_result(ws), promote.load_result(ws)
        validated, evaluated = validate.load_result(ws), evaluate.load_result(ws)
    except MedpipeError:
        return None
    if not (trained.run_id == made.run_id and decision.version == version):
        return None
    logged = client.get_run(made.run_id).data.metrics  # the evaluation in outputs/ is this run's
    if any(logged.get(k) != evaluated.metrics.get(k) for k in ("test_accuracy", "test_roc_auc")):
        return None
    return validated, evaluated, RegisterResult(name, version, made.run_id, f"models:/{name}/{version}"), decision


def run_step(
    params: Params,
    ws: Workspace,
    validated: ValidationReport,
    evaluated: EvaluateResult,
    registered: RegisterResult,
    decision: Decision,
) -> CardResult:
    """Write the version's model card to outputs/card and log it with the version's MLflow run.

    Args:
        params: The run's params (card, the model's name and size, where MLflow is).
        ws: The workspace (writes outputs/card).
        validated: The validate step's report (split table, findings).
        evaluated: The evaluate step's result (metrics, figures, subgroups).
        registered: The register step's result (the version).
        decision: The promotion gate's decision on it.

    Returns:
        The version and where its card is.
    """
    import mlflow

    from pipeline.htmldoc import markdown_html
    from pipeline.registry import setup_tracking

    setup_tracking(params.register_, ws.base)
    client = mlflow.MlflowClient()
    version = client.get_model_version(registered.model_name, str(registered.version))
    lineage = {k: v for k, v in version.tags.items() if k.startswith("medpipe.")}
    final, splits = ws.out / "card", validated.split_table()
    with replace_dir(final) as tmp:
        facts = CardFacts(
            registered.model_name,
            registered.version,
            registered.run_id,
            ws.data_root.name,
            params.model.name,
            params.preprocess.size,
            decision,
            lineage,
            validated,
            splits,
            evaluated.metrics,
            evaluated.subgroups,
            _copy_figures(evaluated, tmp, sorted(set(splits["label"]))),
            params.card.model_dump(),
        )
        text = card_markdown(facts)
        (tmp / MARKDOWN).write_text(text)
        (tmp / HTML).write_text(markdown_html(text, tmp, f"Model card: {registered.model_name} v{registered.version}"))
        (tmp / "card.json").write_text(json.dumps({"version": registered.version, "run_id": registered.run_id}) + "\n")
    client.log_artifacts(registered.run_id, str(final), ARTIFACT)
    client.set_model_version_tag(registered.model_name, str(registered.version), TAG, f"{ARTIFACT}/{HTML}")
    log.info("model card of version %s: %s", registered.version, final / HTML)
    return CardResult(registered.version, final / MARKDOWN, final / HTML)
