"""The register step: log the trained model with its preprocessing as a raw-image pyfunc (models from code,
no pickle) and create a registry version carrying every lineage and metric tag in one call."""

import json
import logging
from dataclasses import asdict, dataclass

from pipeline.config import Params, Workspace
from pipeline.registry import (
    PENDING,
    file_sha256,
    owner_tags,
    setup_tracking,
    task_signature,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterResult:
    """The registered model version and the run that made it."""

    model_name: str
    version: int
    run_id: str
    model_uri: str


def pip_requirements() -> list[str]:
    """What a served model needs, given explicitly (inferring them costs seconds).

    Returns:
        Pinned requirements (`name==version`) of the installed packages.
    """
    from importlib.metadata import version

    import tensorflow as tf

    packages = ("mlflow", "keras", "numpy", "pandas", "opencv-python-headless", "pydicom", "pydantic", "pyyaml")
    return [f"tensorflow=={tf.__version__}", *(f"{p}=={version(p)}" for p in packages)]


def describe(params: Params, meta: dict, tags: dict[str, str]) -> str:
    """The model version's description: what it takes, what it says, where it came from.

    Args:
        params: The run's params.
        meta: The preprocess meta (classes).
        tags: The version's tags (test metrics, data md5, git commit).

    Returns:
        The description text.
    """
    preprocessing = params.preprocess
    metrics = ", ".join(f"{k.removeprefix('medpipe.test_')} {v}" for k, v in tags.items()
                        if k.removeprefix("medpipe.test_") in ("accuracy", "balanced_accuracy", "roc_auc"))
    return (f"{params.model.name} classifying {', '.join(meta['classes'])}. Input: raw PNG/JPEG/DICOM images (bytes or "
            f"base64 in column 'image') or pixel arrays; preprocessed as trained ({preprocessing.color}, "
            f"{preprocessing.size}x{preprocessing.size}, fit {preprocessing.fit}, "
            f"CLAHE {'on' if preprocessing.clahe.enabled else 'off'}, denoise {preprocessing.denoise}, normalise "
            f"{preprocessing.normalize}). Output: label and class probabilities. Test: {metrics or 'n/a'}. "
            f"Data md5 {tags.get('medpipe.data_md5', '?')}, git {tags.get('medpipe.git_commit', '?')[:12]}.")


def register_model(params: Params, ws: Workspace, run_id: str, tags: dict[str, str]) -> RegisterResult:
    """Log outputs/train/model.keras with its preprocessing as a raw-image pyfunc and register a new version.

    The version is created with all its tags and its description in one registry call, marked
    `medpipe.promotion=pending` until the gate decides: a crash can leave an ungated version, never a
    half-tagged one, and an ungated version is finished (gated) by the next run.

    Args:
        params: The run's params.
        ws: The workspace.
        run_id: The MLflow run the model is logged to.
        tags: The version's tags (the model sha256, task signature and pending promotion are added).

    Returns:
        The model name, new version, run id and models:/ URI.
    """
    import cv2
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline import faults
    from pipeline.serving import log_pyfunc
    from pipeline.shards import Shards, read_meta

    registry_params, meta = params.register_, read_meta(ws.out / "preprocess")
    setup_tracking(registry_params, ws.base)
    test = Shards(ws.out / "preprocess", "test")
    example = cv2.imencode(".png", test.take([0])[0])[1].tobytes()  # preprocessed pixels: no DICOM header
    workdir = ws.step_dir("register")
    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc(ws.out / "train" / "model.keras", meta["classes"], params.preprocess, example,
                          workdir, pip_requirements=pip_requirements())
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(registry_params.model_name)
    except MlflowException:
        pass  # it exists
    tags = {**tags, "medpipe.model_sha256": file_sha256(ws.out / "train" / "model.keras", workdir / "serving.json"),
            "medpipe.task_signature": json.dumps(task_signature(meta["classes"], params.preprocess)),
            "medpipe.promotion": PENDING}
    mv = client.create_model_version(registry_params.model_name, source=info.model_uri, run_id=run_id, tags=tags,
                                     description=describe(params, meta, tags), model_id=info.model_id)
    version = int(mv.version)
    log.info("Created version %s of %s (pending the promotion gate)", version, registry_params.model_name)
    faults.point("register.created")
    name = registry_params.model_name
    return RegisterResult(name, version, run_id, f"models:/{name}/{version}")


def run_step(params: Params, ws: Workspace) -> RegisterResult:
    """Register the trained model with the lineage and metric tags of its run.

    Args:
        params: The run's params.
        ws: The workspace (reads outputs/train/run.json).

    Returns:
        The model name, new version, run id and models:/ URI (also written to model_version.json).
    """
    import mlflow

    from pipeline.outputs import write_text
    from pipeline.shards import read_meta

    run_id = json.loads((ws.out / "train" / "run.json").read_text())["run_id"]
    setup_tracking(params.register_, ws.base)
    run = mlflow.get_run(run_id)
    owner = owner_tags()
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("medpipe.") and k not in owner}
    tags.update({f"medpipe.{k}": f"{v:.4f}" for k, v in run.data.metrics.items() if k.startswith("test_")
                 and k.removeprefix("test_") in ("accuracy", "balanced_accuracy", "roc_auc")})
    tags["medpipe.classes"] = json.dumps(read_meta(ws.out / "preprocess")["classes"])
    result = register_model(params, ws, run_id, tags)
    write_text(ws.step_dir("register") / "model_version.json", json.dumps(asdict(result), indent=2) + "\n")
    return result
