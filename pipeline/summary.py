"""What a training run tells its user at the end: model version, lineage and test metrics."""

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Params, Workspace
from pipeline.registry import tracking_uri
from pipeline.validate import counts_text

HEADLINE = ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")


@dataclass(frozen=True)
class UpToDate:
    """A retraining that found nothing new: data, params and code are those of an existing version."""

    model_name: str
    version: int
    finished: str = ""  # what this run finished for it (e.g. the gate's decision after a crash)

    def message(self) -> str:
        """One line for people and logs.

        Returns:
            The up-to-date message, with what this run finished.
        """
        done = f"; {self.finished}" if self.finished else ""
        return (
            f"up to date: {self.model_name} version {self.version} was trained on this data, params and code; "
            f"nothing to retrain (--force retrains anyway){done}"
        )


@dataclass(frozen=True)
class TrainingSummary:
    """The facts printed by `medpipe run` and published as a Prefect artifact."""

    run_id: str
    model_name: str
    version: int
    tracking_uri: str
    split_sizes: dict[str, int]
    class_counts: dict[str, int]
    epochs_run: int
    test_metrics: dict[str, float]
    data_md5: str
    promotion: str = ""
    card: str = ""  # the version's model card (HTML), relative to the project

    @classmethod
    def collect(
        cls, params: Params, ws: Workspace, prepared, balanced, trained, evaluated, registered, decision, card=None
    ) -> "TrainingSummary":
        """Gather the step results into one summary.

        Args:
            params: The run's params.
            ws: The run's workspace.
            prepared: The preprocess step's result (split sizes).
            balanced: The balance step's result (train class counts).
            trained: The train step's result (run id, epochs, data md5).
            evaluated: The evaluate step's result (test metrics).
            registered: The register step's result (model name, version).
            decision: The promotion gate's decision (alias, reasons).
            card: The card step's result (where the model card is), if one was made.

        Returns:
            The summary.
        """
        test = {k: evaluated.metrics[f"test_{k}"] for k in HEADLINE}
        return cls(
            trained.run_id,
            registered.model_name,
            registered.version,
            tracking_uri(params.register_, ws.base),
            prepared.split_sizes,
            balanced.counts_before,
            trained.epochs_run,
            test,
            trained.data_md5,
            f"@{decision.alias}: " + "; ".join(decision.reasons),
            str(card.html.relative_to(ws.base)) if card is not None else "",
        )

    def markdown(self) -> str:
        """A Markdown table for the Prefect UI.

        Returns:
            A heading, the run's facts and the headline test metrics as a table.
        """
        rows = "\n".join(f"| test {k} | {v:.3f} |" for k, v in self.test_metrics.items())
        return (
            f"# {self.model_name} version {self.version}\n\nMLflow run `{self.run_id}`, data md5 "
            f"`{self.data_md5}`, {self.epochs_run} epochs, images {counts_text(self.split_sizes)}, "
            f"train classes {counts_text(self.class_counts)}.\n\n{self.promotion}\n\n"
            + (f"Model card: `{self.card}` (also in the MLflow run, under `model_card/`).\n\n" if self.card else "")
            + f"| metric | value |\n|---|---|\n{rows}\n"
        )

    def ui_hint(self) -> str:
        """How to look at the run in the MLflow UI.

        Returns:
            The `mlflow ui` command for a SQLite store, else the tracking URI to open.
        """
        return ui_hint(self.tracking_uri)


def ui_hint(uri: str) -> str:
    """How to look at a tracking store in the MLflow UI.

    Args:
        uri: The tracking URI.

    Returns:
        The `mlflow ui` command for a SQLite store, else the URI to open.
    """
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}   (or: make mlflow-ui)"
    return f"open {uri}"


LOCAL_UI = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves a local (SQLite) store


def run_page(uri: str, run_id: str) -> str | None:
    """The address of a run's page in the MLflow UI: on the tracking server itself, or for a local store
    where `make mlflow-ui` serves it.

    Args:
        uri: The tracking URI.
        run_id: The run.

    Returns:
        The page's URL, or None for a store no local UI serves (e.g. Databricks) or a run it does not hold.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
    elif uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        base = LOCAL_UI
    else:
        return None
    try:
        experiment = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    except MlflowException:
        return None
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


EMBEDDED = ("roc_pr", "confusion_matrix", "reliability", "training_curves")  # in the Prefect artifact (~150 KB)


def evaluation_markdown(report_md: Path, run_id: str, uri: str, page: str | None = None) -> str:
    """The evaluation report for the Prefect UI: its tables, the summary figures embedded as data: URIs
    (the Markdown report's relative links would not load there; Prefect's UI renders embedded images),
    and where the Grad-CAM overlays are.

    Args:
        report_md: The evaluate step's report.md.
        run_id: The MLflow run holding all figures (artifacts `evaluation/`).
        uri: The tracking URI.
        page: The run's page in the MLflow UI (run_page), linked when given.

    Returns:
        report.md with the EMBEDDED figures inline and the others left out, ending with the MLflow run and
        how to open it.
    """
    import re

    from pipeline.htmldoc import data_uri

    kept: list[str] = []
    left = 0
    for line in report_md.read_text().splitlines():
        found = re.fullmatch(r"!\[([^\]]*)\]\(([^)]*)\)", line)
        if found is None:
            kept.append(line)
            continue
        embedded = data_uri(report_md.parent, found.group(2)) if found.group(1) in EMBEDDED else None
        if embedded:
            kept.append(f"![{found.group(1)}]({embedded})")
        else:
            left += 1
    while kept and not kept[-1].strip():
        kept.pop()
    run = f"[`{run_id}`]({page})" if page else f"`{run_id}`"
    where = f"{left} more figure(s) (Grad-CAM overlays), and all figures as files, are in MLflow run {run}, "
    return "\n".join([*kept, "", where + f"artifacts `evaluation/`: {ui_hint(uri)}"]) + "\n"
