"""Data validation with Great Expectations 1.x over the manifest and per-class counts.

Each check is a real GX expectation run by a Checkpoint on an ephemeral context; the outcome is
written as JSON and as a Markdown report that reads offline (GX's Data Docs pull CSS from CDNs).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import pandas as pd

from pipeline.config import Params, Workspace
from pipeline.data import read_manifest
from pipeline.errors import DataError


@dataclass
class Check:
    """One expectation's outcome, with a few offending values for the report."""

    name: str
    success: bool
    unexpected: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    """What validation found: overall success, each check, and where the reports are."""

    success: bool
    checks: list[Check]
    n_images: int
    class_counts: dict[str, int]
    report_md: str = ""

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    def summary(self) -> str:
        """One line: how many checks failed, with the first offending value."""
        if self.success:
            return f"{len(self.checks)} checks passed on {self.n_images} images"
        first = self.failed[0]
        example = f" (e.g. {first.unexpected[0]})" if first.unexpected else ""
        return f"{len(self.failed)} of {len(self.checks)} checks failed: {first.name}{example}"


def _inside(root: Path, rel: str) -> bool:
    try:
        (root / rel).resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _decodes(path: Path) -> bool:
    return path.is_file() and cv2.imread(str(path), cv2.IMREAD_UNCHANGED) is not None


def image_table(manifest: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Add per-image facts the expectations test: inside the root, exists, decodes."""
    df = manifest.copy()
    df["inside_root"] = [_inside(root, p) for p in df["path"]]
    df["exists"] = [ok and (root / p).is_file() for ok, p in zip(df["inside_root"], df["path"])]
    df["decodes"] = [ok and _decodes(root / p) for ok, p in zip(df["exists"], df["path"])]
    return df


def _expectations(labels: list[str], min_per_class: int) -> dict[str, list]:
    import great_expectations.expectations as gxe

    return {
        "images": [
            gxe.ExpectColumnValuesToNotBeNull(column="path", description="path given"),
            gxe.ExpectColumnValuesToBeUnique(column="path", description="path listed once"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels, description="label known"),
            gxe.ExpectColumnValuesToBeInSet(column="inside_root", value_set=[True],
                                            description="path inside the data root"),
            gxe.ExpectColumnValuesToBeInSet(column="exists", value_set=[True], description="file exists"),
            gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True], description="image decodes"),
        ],
        "classes": [gxe.ExpectColumnValuesToBeBetween(column="count", min_value=min_per_class,
                                                      description=f"at least {min_per_class} images per class")],
    }


def _offenders(result: dict, frame: pd.DataFrame, key: str) -> list[str]:
    """Up to five offending rows as `key` (plus the column's value when it says more)."""
    column = result["expectation_config"]["kwargs"].get("column", key)
    rows = result["result"].get("partial_unexpected_index_list") or []
    show = column not in (key, "inside_root", "exists", "decodes")
    return [f"{frame.loc[i, key]}" + (f" ({column}={frame.loc[i, column]!r})" if show else "")
            for i in rows[:5]]


def run_suites(frames: dict[str, tuple[pd.DataFrame, str]], suites: dict[str, list]) -> list[Check]:
    """Run each expectation suite on its frame with a GX Checkpoint; return one Check each."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas("medpipe")
    checks = []
    for name, expectations in suites.items():
        frame, key = frames[name]
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        vdef = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[vdef],
                                                           result_format={"result_format": "COMPLETE"}))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for vres in result.run_results.values():
            for r in vres.to_json_dict()["results"]:
                checks.append(Check(r["expectation_config"]["description"], r["success"],
                                    _offenders(r, frame, key)))
    return checks


def validate_manifest(manifest: pd.DataFrame, root: Path, labels: list[str], min_per_class: int) -> ValidationReport:
    """Validate a manifest against the images under `root`."""
    images = image_table(manifest, root)
    counts = images["label"].value_counts()
    classes = pd.DataFrame({"label": labels, "count": [int(counts.get(lb, 0)) for lb in labels]})
    frames = {"images": (images, "path"), "classes": (classes, "label")}
    checks = run_suites(frames, _expectations(labels, min_per_class))
    return ValidationReport(all(c.success for c in checks), checks, len(images),
                            dict(zip(classes["label"], classes["count"])))


def write_report(report: ValidationReport, out: Path) -> Path:
    """Write report.json and an offline-readable report.md; return the Markdown path."""
    md = out / "report.md"
    report.report_md = str(md)
    (out / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    lines = [f"# Data validation: {'PASSED' if report.success else 'FAILED'}", "",
             f"{report.n_images} images; class counts: {report.class_counts}", "",
             "| check | result | examples |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {'ok' if c.success else '**FAILED**'} | {', '.join(c.unexpected)} |"
              for c in report.checks]
    md.write_text("\n".join(lines) + "\n")
    return md


def run_step(params: Params, ws: Workspace) -> ValidationReport:
    """Validate the workspace's data set and write the reports under outputs/validate/."""
    out = ws.step_dir("validate")
    try:
        manifest = read_manifest(ws.data_root)
    except DataError as err:
        report = ValidationReport(False, [Check("manifest readable", False, [err.reason])], 0, {})
    else:
        report = validate_manifest(manifest, ws.data_root, params.validate_.labels,
                                   params.validate_.min_per_class)
    write_report(report, out)
    return report
