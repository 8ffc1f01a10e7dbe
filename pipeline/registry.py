"""MLflow tracking and the model registry: where runs go, and registering trained models."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

from pipeline import _env
from pipeline.config import Params, PreprocessParams, RegisterParams, Workspace


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
    _env.restore_user_uris()  # MLflow exported the URIs to os.environ; child processes must not inherit them
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

    packages = ("mlflow", "keras", "numpy", "pandas", "opencv-python-headless", "pydicom", "pydantic", "pyyaml")
    return [f"tensorflow=={tf.__version__}", *(f"{p}=={version(p)}" for p in packages)]


def describe(params: Params, meta: dict, tags: dict[str, str]) -> str:
    """The model version's description: what it takes, what it says, where it came from."""
    pp = params.preprocess
    metrics = ", ".join(f"{k.removeprefix('medpipe.')} {v}" for k, v in tags.items()
                        if k.removeprefix("medpipe.") in ("accuracy", "balanced_accuracy", "roc_auc"))
    return (f"{params.model.name} classifying {', '.join(meta['classes'])}. Input: raw PNG/JPEG/DICOM images (bytes or "
            f"base64 in column 'image') or pixel arrays; preprocessed as trained ({pp.color}, {pp.size}x{pp.size}, "
            f"fit {pp.fit}, CLAHE {'on' if pp.clahe.enabled else 'off'}, denoise {pp.denoise}, normalise "
            f"{pp.normalize}). Output: label and class probabilities. Test: {metrics or 'n/a'}. "
            f"Data md5 {tags.get('medpipe.data_md5', '?')}, git {tags.get('medpipe.git_commit', '?')[:12]}.")


def register_model(params: Params, ws: Workspace, run_id: str, tags: dict[str, str]) -> RegisterResult:
    """Log outputs/train/model.keras with its preprocessing as a raw-image pyfunc and register a new version."""
    import cv2
    import mlflow

    from pipeline.preprocess import Shards, read_meta
    from pipeline.serving import log_pyfunc

    reg, meta = params.register_, read_meta(ws.out / "preprocess")
    setup_tracking(reg, ws.base)
    test = Shards(ws.out / "preprocess", "test")
    example = cv2.imencode(".png", test.take([0])[0])[1].tobytes()  # preprocessed pixels: no DICOM header
    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc(ws.out / "train" / "model.keras", meta["classes"], params.preprocess, example,
                          ws.step_dir("register"), pip_requirements=pip_requirements(),
                          registered_model_name=reg.model_name)
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(reg.model_name, str(version), key, value)
    client.update_model_version(reg.model_name, str(version), description=describe(params, meta, tags))
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


def find_version(uri: str, reg: RegisterParams, base: Path):
    """The registry's ModelVersion for `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `models:/NAME/latest`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.errors import MedpipeError

    setup_tracking(reg, base)
    client = mlflow.MlflowClient()
    name, _, ref = uri.removeprefix("models:/").replace("@", "/@").partition("/")
    try:
        if ref.startswith("@"):
            return client.get_model_version_by_alias(name, ref[1:])
        if ref in ("", "latest"):
            return max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        return client.get_model_version(name, ref)
    except (MlflowException, ValueError):
        raise MedpipeError(uri, "no such registered model version") from None


def load_classifier(uri: str, reg: RegisterParams, base: Path, pp: PreprocessParams):
    """The raw-image classifier behind a registered version (its Keras `.model`, `.classes`, `.pp`),
    and the version number. Versions logged before the raw-image pyfunc (Keras flavour) get their
    class names from their tags and `pp` fitted to their input."""
    import mlflow

    from pipeline.model import input_params

    version = find_version(uri, reg, base)
    model_uri = f"models:/{version.name}/{version.version}"
    if "keras" in mlflow.models.get_model_info(model_uri).flavors:
        model = load_keras(model_uri)
        classes = _classes(version) or [str(i) for i in range(model.output_shape[-1])]
        return SimpleNamespace(model=model, classes=classes, pp=input_params(model, pp)), int(version.version)
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model(), int(version.version)


def load_registered(uri: str, reg: RegisterParams, base: Path):
    """A registered version's Keras model, class names and version number."""
    version = find_version(uri, reg, base)
    model = load_keras(f"models:/{version.name}/{version.version}")
    return model, _classes(version), int(version.version)


def _classes(version) -> list[str]:
    """A registered version's class names, from its `medpipe.classes` tag ([] when it has none)."""
    return json.loads(version.tags.get("medpipe.classes", "[]"))


def load_keras(uri: str):
    """The Keras model of a registered version: inside the raw-image pyfunc, or (versions logged before
    it) the Keras flavour itself."""
    import mlflow

    import pipeline.model  # noqa: F401  (registers medpipe's layers with Keras)

    if "keras" in mlflow.models.get_model_info(uri).flavors:
        return mlflow.keras.load_model(uri)
    return mlflow.pyfunc.load_model(uri).unwrap_python_model().model
