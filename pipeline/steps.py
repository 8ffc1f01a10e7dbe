"""The steps, declared once: name → module, the params they read, what they read and write.

The training flow (flows/training.py), `medpipe stage`, `medpipe reproduce` and dvc.yaml all come from
this declaration. dvc.yaml is generated from it (`python -m pipeline.steps > dvc.yaml`, `make dvc-yaml`)
with each stage's code dependencies derived from the imports of its module, transitively, so a change
to any module a step runs makes `dvc repro` rerun it.
"""

import ast
import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import PIXEL_FIELDS, Params, step_params

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"


@dataclass(frozen=True)
class Step:
    """One step of the pipeline.

    Attributes:
        name: The step's name (task, DVC stage and `medpipe stage` argument).
        module: The library module holding its `run_step(params, workspace, *results)` and, when a later step
            reads its outputs, `load_result(workspace)`.
        params: The params.yaml keys it reads (DVC params: a section or a dotted key).
        inputs: What it reads: `data` or earlier steps' outputs (paths relative to the project; DVC deps).
        outputs: What it writes (relative to the project).
        cached: Whether DVC caches its outputs (False: recorded in dvc.lock only).
        metrics: A metrics file it writes (DVC metrics), if any.
        note: A one-line comment for dvc.yaml.
        files: Library files it runs without importing them (the models-from-code file it logs).
        after: The earlier steps whose typed results `run_step` receives, in its argument order.
        runtime: Keys it reads that change none of its outputs (threads, chunk sizes): not DVC params.
    """

    name: str
    module: str
    params: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    cached: bool = True
    metrics: str | None = None
    note: str = ""
    files: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    runtime: tuple[str, ...] = ()

    @property
    def run(self) -> Callable[..., Any]:
        """The step's `run_step(params, workspace, *results)` (its module is imported on first use), given
        only the params it declares (`config.step_params`: reading any other key raises UndeclaredParams)."""
        run_step = importlib.import_module(f"{PACKAGE}.{self.module}").run_step

        @functools.wraps(run_step)
        def run_declared(params: Params, ws: Any, *results: Any, **options: Any) -> Any:
            declared = step_params(params, (*self.params, *self.runtime), self.name)
            return run_step(declared, ws, *results, **options)

        return run_declared

    def load(self, ws: Any) -> Any:
        """The result this step wrote in a workspace, read back (its module's `load_result`).

        Args:
            ws: The workspace.

        Returns:
            The step's typed result.
        """
        return importlib.import_module(f"{PACKAGE}.{self.module}").load_result(ws)

    def stage(self, params: Any, ws: Any, **options: Any) -> Any:
        """Run the step on its own (`medpipe stage`, a DVC stage): labels and colour `auto` are decided
        from the data as a whole run decides them, and the results of the steps it comes after are read
        back from the workspace, where those steps wrote them.

        Args:
            params: The project's params.
            ws: The workspace.
            **options: Keyword options of its run_step (e.g. `resume` for train).

        Returns:
            The step's typed result.
        """
        from pipeline.autoparams import resolve

        params, notes = resolve(params, ws.data_root)
        for note in notes:
            log.info(note)
        return self.run(params, ws, *(step(name).load(ws) for name in self.after), **options)

    def code(self) -> list[str]:
        """The library files this step runs: its module and every module it imports, transitively, and
        pipeline.autoparams with its imports (`stage` decides labels and colour `auto` with it)."""
        return sorted({*code_deps(f"{PACKAGE}.{self.module}"), *code_deps(f"{PACKAGE}.autoparams"), *self.files})


PIXELS = tuple(f"preprocess.{key}" for key in PIXEL_FIELDS)  # promote compares them
TRACKING = ("register.tracking_uri", "register.artifact_root", "register.experiment")  # where MLflow runs go

STEPS: tuple[Step, ...] = (
    Step(
        "validate",
        "validate",
        (
            "validate",
            "preprocess.split",
            "preprocess.seed",
            "preprocess.max_pixels",
            "preprocess.max_file_mb",
            "preprocess.color",
            "evaluate.subgroups",
        ),
        ("data",),
        ("outputs/validate",),
        cached=False,
        note="GX checks; also decides the leakage-proof split (outputs/validate/splits.csv)",
        runtime=("dask.chunk_size",),
    ),
    Step(
        "preprocess",
        "preprocess",
        (
            "preprocess.size",
            "preprocess.color",
            "preprocess.fit",
            "preprocess.clahe",
            "preprocess.denoise",
            "preprocess.jpeg_reduced",
            "preprocess.shard_size",
            "preprocess.max_pixels",
            "preprocess.max_file_mb",
            "validate.labels",
            "semi.method",  # on: the usable unlabelled images become the `pool` split
            "pretrain.epochs",  # as with semi
        ),
        ("data", "outputs/validate"),
        ("outputs/preprocess",),
        after=("validate",),
        runtime=("preprocess.workers",),
    ),
    Step("balance", "balance", ("balance",), ("outputs/preprocess",), ("outputs/balance",), after=("preprocess",)),
    Step(
        "train",
        "train",
        ("model", "train", "semi", "pretrain", "balance.augment", "preprocess.normalize", *TRACKING),
        ("outputs/balance", "outputs/preprocess", "outputs/validate"),
        ("outputs/train",),
        note="`medpipe stage train --resume` continues an interrupted run",
        after=("validate", "preprocess", "balance"),
    ),
    Step(
        "evaluate",
        "evaluate",
        ("evaluate", "validate.near_duplicates", "train.backend", *TRACKING),
        ("outputs/preprocess", "outputs/train", "outputs/validate"),
        ("outputs/evaluate",),
        cached=False,
        metrics="outputs/metrics.json",
        after=("validate", "preprocess", "train"),
    ),
    Step(
        "register",
        "register",
        ("register", "preprocess", "model.name"),  # the served model carries its preprocessing
        ("outputs/preprocess", "outputs/train", "outputs/metrics.json"),
        ("outputs/register",),
        cached=False,
        files=("pipeline/served_model.py",),
        after=("preprocess", "train"),
    ),
    Step(
        "promote",
        "promote",
        ("promote", *TRACKING, "register.model_name", *PIXELS),
        ("outputs/register", "outputs/preprocess", "outputs/validate"),  # the gate scores on the current test split
        ("outputs/promote",),
        cached=False,
        note="@champion only if it beats the current one (params promote)",
        after=("register",),
    ),
    Step(
        "card",
        "card",
        ("card", *TRACKING, "register.model_name", "model.name", "preprocess.size"),
        ("outputs/validate", "outputs/evaluate", "outputs/metrics.json", "outputs/register", "outputs/promote"),
        ("outputs/card",),
        cached=False,
        note="the version's model card (Markdown + self-contained HTML), logged with its run",
        after=("validate", "evaluate", "register", "promote"),
    ),
)


def step(name: str) -> Step:
    """The step called `name`.

    Raises:
        KeyError: No step has that name.
    """
    for s in STEPS:
        if s.name == name:
            return s
    raise KeyError(name)


def imports_of(path: Path) -> set[str]:
    """Every medpipe module a source file imports, at module level or inside functions (dotted names).

    Args:
        path: A Python file of the project.

    Returns:
        Module names under `pipeline`, `flows` or `cli` (`from pipeline import x` counts as `pipeline.x`
        when x is a module).
    """
    roots = (PACKAGE, "flows", "cli")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in roots)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in roots:
            package = ROOT.joinpath(*node.module.split("."))
            if package.is_dir():
                found.update(
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if (package / f"{a.name}.py").exists() or (package / a.name).is_dir()
                )
            else:
                found.add(node.module)
    return found


def module_file(module: str) -> Path:
    """The source file of a medpipe module (`pipeline.validate` → pipeline/validate.py)."""
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def code_deps(module: str) -> list[str]:
    """A module's file and the files of every library module it imports, transitively, sorted
    (paths relative to the project; the package's `__init__.py` is left out)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen or name == PACKAGE or not module_file(name).is_file():
            continue
        seen.add(name)
        todo.extend(m for m in imports_of(module_file(name)) if m.split(".")[0] == PACKAGE)
    return sorted(module_file(m).relative_to(ROOT).as_posix() for m in seen)


def dvc_yaml() -> str:
    """dvc.yaml's text for the declared steps (what `make dvc-yaml` writes)."""
    out = [
        "# Generated from pipeline/steps.py by `make dvc-yaml`: edit the declaration there, not this file.",
        "# The training flow's steps as DVC stages: `dvc repro` runs the same functions as `medpipe run`.",
        "stages:",
    ]
    for s in STEPS:
        out.append(f"  {s.name}:" + (f"  # {s.note}" if s.note else ""))
        out.append(f"    cmd: medpipe stage {s.name}")
        out.append("    deps:")
        out.extend(f"      - {d}" for d in (*s.inputs, *s.code()))
        out.append("    params:")
        out.extend(f"      - {p}" for p in s.params)
        out.append("    outs:")
        for o in s.outputs:
            out.extend([f"      - {o}:", "          cache: false"] if not s.cached else [f"      - {o}"])
        if s.metrics:
            out.extend(["    metrics:", f"      - {s.metrics}:", "          cache: false"])
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python -m pipeline.steps > dvc.yaml
    print(dvc_yaml(), end="")
