"""The register step: log the trained model with its preprocessing as a raw-image pyfunc (models from code,
no pickle) and create a registry version carrying every lineage and metric tag in one call."""

import json
import logging
from dataclasses import asdict, dataclass

from pipeline.backend import requirements
from pipeline.config import Params, Workspace
from pipeline.preprocess import PreprocessResult
from pipeline.registry import (
    PENDING,
    file_sha256,
    owner_tags,
    setup_tracking,
    task_signature,
)
from pipeline.train import TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterResult:
    """The registered model version and the run that made it."""

    model_name: str
    version: int
    run_id: str
    model_uri: str


def pip_requirements(backend: str = "tensorflow") -> list[str]:
    """What a served model needs, given explicitly (inferring them costs seconds).

    Args:
        backend: The Keras backend it runs on (tensorflow or jax).

    Returns:
        Pinned requirements (`name==version`) of the installed packages.
    """
    from importlib.metadata import version

    packages = ("mlflow", "keras", "numpy", "pandas", "opencv-python-headless", "pydicom", "pydantic", "pyyaml")
    return [*requirements(backend), *(f"{p}=={version(p)}" for p in packages)]


def describe(params: Params, classes: list[str], tags: dict[str, str]) -> str:
    """The model version's description: what it takes, what it says, where it came from.

    Args:
        params: The run's params.
        classes: The class names.
        tags: The version's tags (test metrics, data md5, git commit).

    Returns:
        The description text.
    """
    preprocessing = params.preprocess
    metrics = ", ".join(
        f"{k.removeprefix('medpipe.test_')} {v}"
        for k, v in tags.items()
        if k.removeprefix("medpipe.test_") in ("accuracy", "balanced_accuracy", "roc_auc")
    )
    return (
        f"{params.model.name} classifying {', '.join(classes)}. Input: raw PNG/JPEG/DICOM images (bytes or "
        f"base64 in column 'image') or pixel arrays; preprocessed as trained ({preprocessing.color}, "
        f"{preprocessing.size}x{preprocessing.size}, fit {preprocessing.fit}, "
        f"CLAHE {'on' if preprocessing.clahe.enabled else 'off'}, denoise {preprocessing.denoise}, normalise "
        f"{preprocessing.normalize}). Output: label and class probabilities. Test: {metrics or 'n/a'}. "
        f"Data md5 {tags.get('medpipe.data_md5', '?')}, git {tags.get('medpipe.git_commit', '?')[:12]}."
    )


def register_model(
    params: Params, ws: Workspace, prepared: PreprocessResult, trained: TrainResult, tags: dict[str, str]
) -> RegisterResult:
    """Log the trained model with its preprocessing as a raw-image pyfunc and register a new version.

    The version is created with all its tags and its description in one registry call, marked
    `medpipe.promotion=pending` until the gate decides: a crash can leave an ungated version, never a
    half-tagged one, and an ungated version is finished (gated) by the next run.

    Args:
        params: The run's params.
        ws: The workspace (writes outputs/register).
        prepared: The preprocess step's result (classes; a test image is the input example).
        trained: The train step's result (the model, logged to its MLflow run).
        tags: The version's tags (the model sha256, task signature and pending promotion are added).

    Returns:
        The model name, new version, run id and models:/ URI.
    """
    import cv2
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline import faults
    from pipeline.serving import log_pyfunc
    from pipeline.shards import Shards

    registry_params, classes, run_id = params.register_, prepared.classes, trained.run_id
    model_file = ws.base / trained.model_path
    setup_tracking(registry_params, ws.base)
    test = Shards(prepared.folder, "test")
    example = cv2.imencode(".png", test.take([0])[0])[1].tobytes()  # preprocessed pixels: no DICOM header
    workdir = ws.step_dir("register")
    with mlflow.start_run(run_id=run_id):
        backend = tags.get("medpipe.backend", "tensorflow")
        pins = pip_requirements(backend)
        info = log_pyfunc(model_file, classes, params.preprocess, example, workdir, backend, pip_requirements=pins)
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(registry_params.model_name)
    except MlflowException:
        pass  # it exists
    tags = {
        **tags,
        "medpipe.model_sha256": file_sha256(model_file, workdir / "serving.json"),
        "medpipe.task_signature": json.dumps(task_signature(classes, params.preprocess)),
        "medpipe.promotion": PENDING,
    }
    mv = client.create_model_version(
        registry_params.model_name,
        source=info.model_uri,
        run_id=run_id,
        tags=tags,
        description=describe(params, classes, tags),
        model_id=info.model_id,
    )
    version = int(mv.version)
    log.info("Created version %s of %s (pending the promotion gate)", version, registry_params.model_name)
    faults.point("register.created")
    name = registry_params.model_name
    return RegisterResult(name, version, run_id, f"models:/{name}/{version}")


def run_step(params: Params, ws: Workspace, prepared: PreprocessResult, trained: TrainResult) -> RegisterResult:
    """Register the trained model with the lineage and metric tags of its (evaluated) run.

    Args:
        params: The run's params (register, preprocess).
        ws: The workspace (writes outputs/register).
        prepared: The preprocess step's result.
        trained: The train step's result.

    Returns:
        The model name, new version, run id and models:/ URI (also written to model_version.json).
    """
    import mlflow

    from pipeline.outputs import write_text

    run_id = trained.run_id
    setup_tracking(params.register_, ws.base)
    run = mlflow.get_run(run_id)
    owner = owner_tags()
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("medpipe.") and k not in owner}
    tags.update(
        {
            f"medpipe.{k}": f"{v:.4f}"
            for k, v in run.data.metrics.items()
            if k.startswith("test_") and k.removeprefix("test_") in ("accuracy", "balanced_accuracy", "roc_auc")
        }
    )
    tags["medpipe.classes"] = json.dumps(prepared.classes)
    result = register_model(params, ws, prepared, trained, tags)
    write_text(ws.step_dir("register") / "model_version.json", json.dumps(asdict(result), indent=2) + "\n")
    return result


def load_result(ws: Workspace) -> RegisterResult:
    """Read back what the register step wrote (for a step run on its own, e.g. by DVC).

    Args:
        ws: The workspace (reads outputs/register/model_version.json).

    Returns:
        The RegisterResult run_step returned.

    Raises:
        MedpipeError: No model has been registered from this workspace.
    """
    from pipeline.outputs import read_result

    return read_result(ws.out / "register" / "model_version.json", "register", lambda raw: RegisterResult(**raw))
