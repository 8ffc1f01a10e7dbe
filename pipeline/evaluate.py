"""Evaluation: headline and per-class metrics, a confusion-matrix plot, metrics.json for DVC."""

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.backend import select
from pipeline.config import GATE_METRICS, Params, Workspace
from pipeline.data import SUBGROUP_PREFIX
from pipeline.metrics import (
    bootstrap_ci,
    classification_metrics,
    per_class_metrics,
    subgroup_metrics,
    threshold_metrics,
)
from pipeline.outputs import replace_dir, write_text
from pipeline.preprocess import PreprocessResult
from pipeline.shards import Shards
from pipeline.train import TrainResult
from pipeline.validate import ValidationReport


@dataclass(frozen=True)
class EvaluateResult:
    """Final metrics (`val_*`, `test_*`) and the files written."""

    metrics: dict[str, float]
    metrics_file: Path
    plots: list[Path]
    report_md: Path
    subgroups: list[dict] = field(default_factory=list)  # metrics.subgroup_metrics rows (evaluate.subgroups)

    @property
    def report_html(self) -> Path:
        """The report as one self-contained HTML page (figures embedded)."""
        return self.report_md.with_suffix(".html")


def clean_test_mask(splits: pd.DataFrame) -> np.ndarray:
    """Which test images (in split-table order, as the test shards) have no near copy in train.

    Args:
        splits: the split table (outputs/validate/splits.csv) with `split` and `near_train`, which validation
            fills at `validate.near_duplicates.clean_threshold` (pipeline.validate.near_train).

    Returns:
        A boolean per test image.
    """
    test = splits[splits["split"] == "test"]
    return ~test["near_train"].astype(str).eq("True").to_numpy()


def clean_metrics(y: np.ndarray, p: np.ndarray, clean: np.ndarray, bins: int) -> dict[str, float]:
    """`test_clean_<metric>` on the test images without a near copy in train, and `test_clean_n`.

    Args:
        y: The test labels.
        p: The test class probabilities.
        clean: Which test images have no near copy in train (clean_test_mask).
        bins: Calibration bins for the ECE.

    Returns:
        test_clean_n, and the test_clean_ metrics when the clean images hold more than one class.
    """
    out = {"test_clean_n": float(clean.sum())}
    if clean.sum() and len(np.unique(y[clean])) > 1:
        out.update({f"test_clean_{k}": v for k, v in classification_metrics(y[clean], p[clean], bins).items()})
    return out


def run_step(
    params: Params, ws: Workspace, validated: ValidationReport, prepared: PreprocessResult, trained: TrainResult
) -> EvaluateResult:
    """Evaluate the trained model on val and test; write metrics.json, plots and a report; log to MLflow.

    Args:
        params: The run's params (evaluate, validate.near_duplicates, register).
        ws: The workspace (writes outputs/evaluate and outputs/metrics.json).
        validated: The validate step's report (the split table: near copies, test file names).
        prepared: The preprocess step's result (the val and test shards).
        trained: The train step's result (the model and its MLflow run).

    Returns:
        The metrics, where metrics.json is, and the plots made.
    """
    import mlflow

    select(params.train.backend)  # before Keras is imported: a DVC stage's own process
    from pipeline.model import load_model, predict
    from pipeline.registry import owner_tags, setup_tracking

    evaluation, folder = params.evaluate, prepared.folder
    classes = prepared.classes
    shards = {s: Shards(folder, s) for s in ("val", "test")}  # uint8: a quarter of float32's memory
    data = {f"{k}_{s}": v for s, sh in shards.items() for k, v in (("x", sh.read()), ("y", sh.labels))}
    model = load_model(ws.base / trained.model_path)
    proba = {s: predict(model, data[f"x_{s}"]) for s in ("val", "test")}
    metrics = {
        f"{s}_{k}": v
        for s in ("val", "test")
        for k, v in classification_metrics(data[f"y_{s}"], proba[s], evaluation.ece_bins).items()
    }
    y, p = data["y_test"], proba["test"]
    metrics.update({f"test_{k}": v for k, v in per_class_metrics(y, p.argmax(axis=1), classes).items()})
    metrics.update(
        {f"test_{k}": float(v) for k, v in bootstrap_ci(y, p, evaluation.bootstrap, evaluation.seed).items()}
    )
    if len(classes) == 2:
        metrics.update(
            {
                f"test_{k}" if k != "threshold" else k: v
                for k, v in threshold_metrics(data["y_val"], proba["val"], y, p, evaluation.target_sensitivity).items()
            }
        )
    splits = validated.split_table()
    clean = clean_test_mask(splits)
    metrics.update(clean_metrics(y, p, clean, evaluation.ece_bins))
    test = splits[splits["split"] == "test"]
    groups = subgroup_metrics(y, p, {c: test[SUBGROUP_PREFIX + c].to_numpy() for c in evaluation.subgroups})
    out = ws.out / "evaluate"
    with replace_dir(out) as tmp:  # nothing of an earlier run (e.g. its Grad-CAMs) survives
        history = json.loads((trained.folder(ws.base) / "history.json").read_text())
        made = _figures(model, data, p, classes, evaluation, tmp, history, test_names(splits))
        write_report(metrics, classes, made, tmp, groups)
        plots_made = [out / f.relative_to(tmp) for f in made]
        result = EvaluateResult(metrics, ws.out / "metrics.json", plots_made, out / "report.md", groups)
        (tmp / RESULT).write_text(json.dumps(_portable(result, ws.base), indent=2) + "\n")
    write_text(ws.out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    setup_tracking(params.register_, ws.base)
    with mlflow.start_run(run_id=trained.run_id):
        # after the per-epoch curves (val_roc_auc shares its name), so the final value is the latest
        mlflow.set_tags(owner_tags())
        mlflow.log_metrics(metrics, step=trained.epochs_run)
        mlflow.log_artifacts(str(out), "evaluation")
        for path in plots_made:  # as images too, so the run page shows them among its charts
            mlflow.log_image(_picture(path), key=image_key(path, out), step=trained.epochs_run, synchronous=True)
    return result


def image_key(figure: Path, out: Path) -> str:
    """The MLflow image key of an evaluation figure: `figures/<name>`, or `gradcam/<name>` for an overlay.

    MLflow shows each key as a chart in the section before its slash (after the learning curves).

    Args:
        figure: A figure under `out`.
        out: The evaluation folder.

    Returns:
        A key of the characters MLflow accepts.
    """
    section = "gradcam" if figure.relative_to(out).parts[0] == "gradcam" else "figures"
    return f"{section}/{re.sub(r'[^a-zA-Z0-9_.-]', '_', figure.stem)}"


def _picture(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()


RESULT = "result.json"  # what load_result reads back (paths relative to the project)


def _portable(result: EvaluateResult, base: Path) -> dict:
    raw = asdict(result)
    raw.update(
        metrics_file=str(result.metrics_file.relative_to(base)),
        report_md=str(result.report_md.relative_to(base)),
        plots=[str(p.relative_to(base)) for p in result.plots],
    )
    raw.pop("metrics")  # outputs/metrics.json holds them
    return raw


def load_result(ws: Workspace) -> EvaluateResult:
    """Read back what the evaluate step wrote (for a step run on its own, e.g. by DVC).

    Args:
        ws: The workspace (reads outputs/evaluate/result.json and outputs/metrics.json).

    Returns:
        The EvaluateResult run_step returned.

    Raises:
        MedpipeError: The model has not been evaluated in this workspace.
    """
    from pipeline.outputs import read_result

    def build(raw: dict) -> EvaluateResult:
        metrics = json.loads((ws.base / raw["metrics_file"]).read_text())
        return EvaluateResult(
            metrics,
            ws.base / raw["metrics_file"],
            [ws.base / p for p in raw["plots"]],
            ws.base / raw["report_md"],
            raw["subgroups"],
        )

    return read_result(ws.out / "evaluate" / RESULT, "evaluate", build)


def _figures(
    model, data: dict, p: np.ndarray, classes: list[str], evaluation, out: Path, history: dict, names: list[str]
) -> list[Path]:
    """The evaluation plots and Grad-CAM overlays, written into `out`."""
    from pipeline import plots

    y = data["y_test"]
    plots_made = [
        plots.plot_confusion(y, p.argmax(axis=1), classes, out / "confusion_matrix.png"),
        plots.roc_pr_curves(y, p, classes, out / "roc_pr.png"),
        plots.reliability(y, p, evaluation.ece_bins, out / "reliability.png"),
        plots.training_curves(history, out / "training_curves.png"),
        *explain_examples(model, data["x_test"], y, p, classes, evaluation.cam_per_class, out / "gradcam", names),
    ]
    return plots_made


def test_names(table: pd.DataFrame) -> list[str]:
    """How to name each test image to people: its file name, or for DICOM (whose names may carry
    identifiers) its pseudonymous patient key and row.

    Args:
        table: The split table (ValidationReport.split_table()).

    Returns:
        One name per test image, in split-table order.
    """
    test = table[table["split"] == "test"].reset_index(drop=True)
    return [
        f"{pid}-{i}" if path.lower().endswith(".dcm") else Path(path).name
        for i, (path, pid) in enumerate(zip(test["path"], test["patient_id"]))
    ]


def explain_examples(
    model,
    x: np.ndarray,
    y: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    per_class: int,
    out: Path,
    names: list[str] | None = None,
) -> list[Path]:
    """Grad-CAM overlays of up to `per_class` correct and misclassified test images (uint8) per true class,
    captioned with the source, the true label, the prediction and its probability, and a colour scale.

    Args:
        model: The Keras model.
        x: The test images, uint8.
        y: Their labels.
        proba: Their class probabilities.
        classes: The class names.
        per_class: At most this many correct and this many wrong images per class.
        out: The folder the PNGs are written to (created).
        names: A name per image for captions and file names (None: "test image <i>").

    Returns:
        The PNGs written.
    """
    import re

    import cv2

    from pipeline.explain import captioned, grad_cam, overlay

    out.mkdir(parents=True, exist_ok=True)
    pred, paths = proba.argmax(axis=1), []
    for c, name in enumerate(classes):
        for kind, chosen in (("correct", (y == c) & (pred == c)), ("wrong", (y == c) & (pred != c))):
            for i in np.flatnonzero(chosen)[:per_class]:
                image = x[i].astype(np.float32) / 255.0
                cam, _ = grad_cam(model, image, int(pred[i]))
                source = names[i] if names else f"test image {i}"
                caption = [source, f"true: {name}   predicted: {classes[pred[i]]} (p = {proba[i, pred[i]]:.2f})"]
                stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).stem)[:60]
                path = out / f"{name}_{kind}_{stem}_pred-{classes[pred[i]]}.png"
                cv2.imwrite(str(path), captioned(overlay(image, cam), caption))
                paths.append(path)
    return paths


def subgroup_table(rows: list[dict]) -> list[str]:
    """Markdown lines: the subgroup metrics (metrics.subgroup_metrics rows), n first; none: no lines.

    Args:
        rows: The subgroup rows.

    Returns:
        A heading and a table, or nothing.
    """
    if not rows:
        return []
    keys = ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")
    lines = [
        "## Subgroups (test)",
        "",
        "| column | group | n | " + " | ".join(keys) + " |",
        "|---" * (3 + len(keys)) + "|",
    ]
    lines += [
        f"| {r['column']} | {r['group']} | {r['n']} | " + " | ".join(number(r[k]) for k in keys) + " |" for r in rows
    ]
    return [*lines, ""]


def number(value: float | None) -> str:
    """A metric as the reports print it: three decimals; `n/a` when missing or NaN (e.g. a group lacking a
    class the metric needs)."""
    return "n/a" if value is None or value != value else f"{value:.3f}"


def write_report(
    metrics: dict[str, float], classes: list[str], figures: list[Path], out: Path, subgroups: list[dict] | None = None
) -> Path:
    """report.md and report.html (self-contained): headline metrics with 95% intervals, per-class table,
    subgroups, and the figures.

    Args:
        metrics: The evaluation metrics.
        classes: The class names.
        figures: The figures to embed (paths under `out`).
        out: The folder the reports are written to.
        subgroups: metrics.subgroup_metrics rows, if any.

    Returns:
        The report.md path.
    """
    from pipeline.htmldoc import markdown_html

    m = metrics
    lines = ["# Evaluation", "", "| metric | validation | test |", "|---|---|---|"]
    lines += [f"| {k} | {m[f'val_{k}']:.3f} | {m[f'test_{k}']:.3f} |" for k in GATE_METRICS]
    if "test_clean_accuracy" in m:
        lines += [
            "",
            f"Test images without a near copy in train ({int(m['test_clean_n'])}):",
            "",
            "| metric | test | test (clean) |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {m[f'test_{k}']:.3f} | {m[f'test_clean_{k}']:.3f} |" for k in GATE_METRICS]
    elif "test_clean_n" in m:
        lines += [
            "",
            f"Test images without a near copy in train: {int(m['test_clean_n'])} (too few classes for metrics).",
        ]
    lines += [
        "",
        f"Test ROC-AUC 95% CI: [{m['test_roc_auc_ci_low']:.3f}, {m['test_roc_auc_ci_high']:.3f}]; "
        f"balanced accuracy 95% CI: [{m['test_balanced_accuracy_ci_low']:.3f}, "
        f"{m['test_balanced_accuracy_ci_high']:.3f}] (bootstrap).",
        "",
    ]
    if "threshold" in m:
        lines += [
            f"Operating threshold (chosen on validation): {m['threshold']:.3f} → test sensitivity "
            f"{m['test_sensitivity_at_threshold']:.3f}, specificity "
            f"{m['test_specificity_at_threshold']:.3f}.",
            "",
        ]
    lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [
        f"| {c} | {m[f'test_precision_{c}']:.3f} | {m[f'test_recall_{c}']:.3f} | {m[f'test_f1_{c}']:.3f} | "
        f"{int(m[f'test_support_{c}'])} |"
        for c in classes
    ]
    lines += ["", *subgroup_table(subgroups or [])]
    lines += [f"![{f.stem}]({f.relative_to(out).as_posix()})" for f in figures]
    path = out / "report.md"
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    path.with_suffix(".html").write_text(markdown_html(text, out, "Evaluation"))
    return path
