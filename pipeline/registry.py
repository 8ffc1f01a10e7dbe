"""MLflow tracking and the model registry: where runs go, and registering trained models."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline import _env
from pipeline.config import Params, RegisterParams, Workspace


@dataclass(frozen=True)
class RegisterResult:
    """The registered model version and the run that made it."""

    model_name: str
    version: int
    run_id: str
    model_uri: str


def tracking_uri(reg: RegisterParams, base: Path) -> str:
    """MLFLOW_TRACKING_URI if the user set it, else params' URI with a relative SQLite path made absolute."""
    uri = _env.USER_TRACKING_URI or reg.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        db = base / uri[len(prefix):]
        db.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(db)
    return uri


def setup_tracking(reg: RegisterParams, base: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    import mlflow

    uri = tracking_uri(reg, base)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # else the registry keeps the first store this process used
    experiment = mlflow.get_experiment_by_name(reg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    local = uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri
    artifacts = (base / reg.artifact_root).resolve().as_uri() if local else None
    return mlflow.create_experiment(reg.experiment, artifact_location=artifacts)


def pip_requirements() -> list[str]:
    """What a served model needs, given explicitly (inferring them costs seconds)."""
    from importlib.metadata import version

    import tensorflow as tf

    return [f"mlflow=={version('mlflow')}", f"keras=={version('keras')}",
            f"tensorflow=={tf.__version__}", f"numpy=={version('numpy')}"]


def register_model(params: Params, ws: Workspace, run_id: str, tags: dict[str, str]) -> RegisterResult:
    """Log outputs/train/model.keras to the run and register it as a new model version."""
    import mlflow
    from mlflow.models import infer_signature

    from pipeline.model import load_model
    from pipeline.preprocess import load_split

    reg = params.register_
    setup_tracking(reg, ws.base)
    model = load_model(ws.out / "train" / "model.keras")
    x = load_split(ws.out / "preprocess", "test")[0][:2]
    signature = infer_signature(x, model.predict(x, verbose=0))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.keras.log_model(model, name="model", signature=signature,
                                      pip_requirements=pip_requirements(), registered_model_name=reg.model_name)
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(reg.model_name, str(version), key, value)
    return RegisterResult(reg.model_name, version, run_id, f"models:/{reg.model_name}/{version}")


def run_step(params: Params, ws: Workspace) -> RegisterResult:
    """Register the trained model with the lineage and metric tags of its run."""
    import mlflow

    from pipeline.preprocess import read_meta

    run_id = json.loads((ws.out / "train" / "run.json").read_text())["run_id"]
    setup_tracking(params.register_, ws.base)
    run = mlflow.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("medpipe.")}
    tags.update({f"medpipe.{k}": f"{v:.4f}" for k, v in run.data.metrics.items() if k.startswith("test_")
                 and k.removeprefix("test_") in ("accuracy", "balanced_accuracy", "roc_auc")})
    tags["medpipe.classes"] = json.dumps(read_meta(ws.out / "preprocess")["classes"])
    result = register_model(params, ws, run_id, tags)
    out = ws.step_dir("register")
    (out / "model_version.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def load_registered(uri: str, reg: RegisterParams, base: Path):
    """A registered Keras model and its class names from `models:/NAME/VERSION`, `models:/NAME@ALIAS`
    or `models:/NAME/latest`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.errors import MedpipeError

    setup_tracking(reg, base)
    client = mlflow.MlflowClient()
    name, _, ref = uri.removeprefix("models:/").replace("@", "/@").partition("/")
    try:
        if ref.startswith("@"):
            version = client.get_model_version_by_alias(name, ref[1:])
        elif ref in ("", "latest"):
            version = max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        else:
            version = client.get_model_version(name, ref)
    except (MlflowException, ValueError):
        raise MedpipeError(uri, "no such registered model version") from None
    import pipeline.model  # noqa: F401  (registers the custom layers the model uses)

    model = mlflow.keras.load_model(f"models:/{name}/{version.version}")
    return model, json.loads(version.tags.get("medpipe.classes", "[]")), int(version.version)
