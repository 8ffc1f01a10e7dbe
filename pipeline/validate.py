"""Data validation with Great Expectations 1.x: errors stop the flow, warnings are recorded.

The scan table (one row per image) and small derived tables (per patient, per image hash, per
class) are checked by real GX expectation suites run through Checkpoints on an ephemeral
context. The outcome is written as JSON, Markdown and a self-contained HTML page that reads
offline (GX's own Data Docs pull their CSS from CDNs). The split is decided here, so the
checks can prove that no patient and no image crosses splits.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from pipeline import faults
from pipeline.config import Params, PreprocessParams, ValidateParams, Workspace
from pipeline.data import discover
from pipeline.errors import DataError
from pipeline.limits import MB
from pipeline.outputs import replace_dir
from pipeline.preprocess import SPLITS, leakage_groups, split_patients
from pipeline.scan import Mapper, inside_root, scan


@dataclass
class Check:
    """One expectation's outcome, with a few offending values for the report."""

    name: str
    success: bool
    unexpected: list[str] = field(default_factory=list)
    severity: str = "error"


@dataclass
class ValidationReport:
    """What validation found: overall success (errors only), each check, and where the reports are."""

    success: bool
    checks: list[Check]
    n_images: int
    class_counts: dict[str, int]
    report_md: str = ""

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.success and c.severity == "error"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if not c.success and c.severity == "warning"]

    def summary(self) -> str:
        """One line: how many error checks failed, with the first offending value."""
        n_errors = sum(c.severity == "error" for c in self.checks)
        warned = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        if self.success:
            return f"{n_errors} checks passed on {self.n_images} images{warned}"
        first = self.failed[0]
        example = f" (e.g. {first.unexpected[0]})" if first.unexpected else ""
        return f"{len(self.failed)} of {n_errors} checks failed: {first.name}{example}{warned}"


def failure(report: "ValidationReport", data_root: Path) -> DataError:
    """The one-line error for a failed validation: `<data root>: <what failed>; report: <path>`."""
    return DataError(data_root, f"data validation failed, {report.summary()}; report: {report.report_md}")


def image_table(manifest: pd.DataFrame, root: Path, cache: Path | None, vp: ValidateParams,
                project: Path = Path("."), mapper: Mapper | None = None, chunk_size: int = 1024,
                pp: PreprocessParams = PreprocessParams()) -> pd.DataFrame:
    """Manifest joined with the scan: per-image facts the expectations test (images over `pp`'s caps,
    max_pixels and max_file_mb, are unreadable)."""
    table = scan(root, manifest["path"].tolist(), cache=cache, project=project, mapper=mapper,
                 chunk_size=chunk_size, max_pixels=pp.max_pixels, max_bytes=pp.max_file_mb * MB).drop(columns="path")
    df = pd.concat([manifest.reset_index(drop=True), table], axis=1)
    df["inside_root"] = [inside_root(root, p) for p in df["path"]]
    df["exists"] = [ok and (root / p).is_file() for ok, p in zip(df["inside_root"], df["path"])]
    df["reason"] = [f"{p}: {e}" if e else p for p, e in zip(df["path"], df["error"])]
    df["patient_id"] = [pid or key or p for pid, key, p in zip(df["patient_id"], df["patient_key"], df["path"])]
    df["not_blank"] = ~df["readable"] | (df["std"] >= vp.blank_std)
    df["sharp"] = ~df["readable"] | (df["blur"] >= vp.blur_min)
    return df.drop(columns=["patient_key", "error"])


def assign_splits(images: pd.DataFrame, params: Params) -> pd.Series:
    """The manifest's own splits when it has them for every image, else a patient-grouped split."""
    if (images["split"] != "").all():
        return images["split"]
    hashes = images["sha256"].where(images["sha256"] != "", images["path"])
    grouped = images.assign(group=leakage_groups(images["patient_id"], hashes))
    return split_patients(grouped, params.preprocess.split, params.preprocess.seed)


def derived_tables(images: pd.DataFrame, labels: list[str], empty_folders: list[str]) -> dict[str, pd.DataFrame]:
    """Per patient, per image hash, per (split, hash) and per class views of the image table."""
    readable = images[images["readable"]]
    counts = images["label"].value_counts()
    classes = pd.DataFrame({"label": labels, "count": [int(counts.get(lb, 0)) for lb in labels]})
    classes["label"] = [f"{lb} (empty class folder)" if lb in empty_folders else lb for lb in classes["label"]]
    present = classes["count"][classes["count"] > 0]
    ratio = float(present.max() / present.min()) if len(present) else 1.0
    return {
        "patients": images.groupby("patient_id").agg(n_splits=("split", "nunique")).reset_index(),
        "hashes": readable.groupby("sha256").agg(n_splits=("split", "nunique"), path=("path", " = ".join))
        .reset_index(),
        "within": readable.groupby(["split", "sha256"]).agg(copies=("path", "size"), paths=("path", " = ".join))
        .reset_index(),
        "classes": classes,
        "balance": pd.DataFrame({"what": ["largest / smallest class"], "ratio": [ratio]}),
    }


def _expectations(vp: ValidateParams) -> dict[str, tuple[str, str, list]]:
    """Suites as (frame, column shown for offenders, expectations); warnings live in their own suites."""
    import great_expectations.expectations as gxe

    def in_set(column, values, text):
        return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=values, description=text)

    return {
        "images": ("images", "reason", [
            gxe.ExpectColumnValuesToBeUnique(column="path", description="path listed once"),
            gxe.ExpectColumnValuesToNotBeNull(column="label", description="label given"),
            in_set("label", vp.labels, "label known"),
            in_set("inside_root", [True], "path inside the data root"),
            in_set("exists", [True], "file exists"),
            in_set("readable", [True], "image readable"),
            in_set("split", list(SPLITS), "split is train, val or test")]
            + ([in_set("not_blank", [True], "not blank")] if vp.blank == "error" else [])),
        "patients": ("patients", "patient_id", [in_set("n_splits", [1], "each patient in one split")]),
        "hashes": ("hashes", "path", [in_set("n_splits", [1], "each image (sha256) in one split")]),
        "classes": ("classes", "label", [gxe.ExpectColumnValuesToBeBetween(
            column="count", min_value=vp.min_per_class, description=f"at least {vp.min_per_class} images per class")]),
        "image_warnings": ("images", "path", [in_set("sharp", [True], "not blurry (warning)")]
                           + ([in_set("not_blank", [True], "not blank (warning)")] if vp.blank == "warning" else [])),
        "split_warnings": ("within", "paths", [gxe.ExpectColumnValuesToBeBetween(
            column="copies", max_value=1, description="no duplicate images within a split (warning)")]),
        "balance_warnings": ("balance", "what", [gxe.ExpectColumnValuesToBeBetween(
            column="ratio", max_value=vp.max_imbalance, description=f"class imbalance at most {vp.max_imbalance:g}:1 "
                                                                    "(warning)")]),
    }


def _offenders(result: dict, frame: pd.DataFrame, key: str) -> list[str]:
    """Up to five offending rows as `key`, with the tested column's value when it adds something."""
    column = result["expectation_config"]["kwargs"].get("column", key)
    rows = result["result"].get("partial_unexpected_index_list") or []
    show = column in ("label", "split", "count", "ratio", "n_splits", "copies")

    def value(i: int) -> object:
        v = frame.loc[i, column]
        return v.item() if hasattr(v, "item") else v

    return [f"{frame.loc[i, key]}" + (f" ({column}={value(i)!r})" if show else "") for i in rows[:5]]


def run_suites(frames: dict[str, pd.DataFrame], suites: dict[str, tuple[str, str, list]]) -> list[Check]:
    """Run each suite on its frame with a GX Checkpoint; return one Check per expectation."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas("medpipe")
    checks = []
    for name, (frame_name, key, expectations) in suites.items():
        frame = frames[frame_name].reset_index(drop=True)
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        vdef = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[vdef],
                                                           result_format={"result_format": "COMPLETE"}))
        for vres in checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values():
            for r in vres.to_json_dict()["results"]:
                severity = "warning" if name.endswith("_warnings") else "error"
                checks.append(Check(r["expectation_config"]["description"], r["success"],
                                    _offenders(r, frame, key), severity))
    return checks


def validate_data(root: Path, params: Params, out: Path, project: Path,
                  mapper: Mapper | None = None) -> tuple[ValidationReport, pd.DataFrame]:
    """Validate the data set under `root` (the scan through `mapper` if given); return the report and the
    image table with splits."""
    manifest, empty_folders = discover(root)
    vp = params.validate_
    images = image_table(manifest, root, out.parent / "cache" / "scan.csv", vp, project, mapper,
                         params.dask.chunk_size, params.preprocess)
    images["split"] = assign_splits(images, params).fillna("")
    frames = {"images": images, **derived_tables(images, vp.labels, empty_folders)}
    checks = run_suites(frames, _expectations(vp))
    counts = images["label"].value_counts().to_dict()
    report = ValidationReport(all(c.success for c in checks if c.severity == "error"), checks, len(images),
                              {lb: int(counts.get(lb, 0)) for lb in vp.labels})
    return report, images


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}.ok{color:#1a7f37}"
        ".error{color:#cf222e;font-weight:bold}.warning{color:#9a6700;font-weight:bold}")


def _status(check: Check) -> str:
    return "ok" if check.success else check.severity


def write_report(report: ValidationReport, out: Path, final: Path | None = None) -> Path:
    """Write report.json, report.md and a self-contained report.html into `out` (a temporary folder that
    becomes `final`, when given); return the Markdown path."""
    from html import escape

    md = out / "report.md"
    report.report_md = str((final or out) / "report.md")
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    title = f"Data validation: {'PASSED' if report.success else 'FAILED'}"
    lines = [f"# {title}", "", report.summary(), "", f"Class counts: {report.class_counts}", "",
             "| check | result | examples |", "|---|---|---|"]
    lines += [f"| {c.name} | {_status(c)} | {'; '.join(c.unexpected)} |" for c in report.checks]
    md.write_text("\n".join(lines) + "\n")
    rows = "".join(f"<tr><td>{escape(c.name)}</td><td class='{_status(c)}'>{_status(c)}</td>"
                   f"<td>{'<br>'.join(escape(u) for u in c.unexpected)}</td></tr>" for c in report.checks)
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
        f"<body><h1>{title}</h1><p>{escape(report.summary())}</p><p>Class counts: "
        f"{escape(str(report.class_counts))}</p><table><tr><th>check</th><th>result</th><th>examples</th></tr>"
        f"{rows}</table></body></html>\n")
    return md


def run_step(params: Params, ws: Workspace, out: Path | None = None, mapper: Mapper | None = None) -> ValidationReport:
    """Validate the workspace's data; write reports and the split table under outputs/validate/.
    The image scan runs through `mapper` when one is given (a Dask cluster: flows/data.py)."""
    final = out or ws.out / "validate"
    with replace_dir(final) as tmp:  # a crash leaves the previous reports and split, never half of them
        try:
            report, images = validate_data(ws.data_root, params, final, ws.base, mapper)
        except DataError as err:
            report, images = ValidationReport(False, [Check("data set readable", False, [str(err)])], 0, {}), None
        faults.point("validate.scan")
        if images is not None:
            columns = ["path", "label", "patient_id", "split", "sha256"]
            images[columns].to_csv(tmp / "splits.csv", index=False, lineterminator="\n")
        write_report(report, tmp, final)
    return report
