"""MLflow tracking and the model registry: where runs go, and registering trained models."""

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from pipeline import _env
from pipeline.config import Params, PreprocessParams, RegisterParams, Workspace

log = logging.getLogger(__name__)


def tracking_uri(registry_params: RegisterParams, base: Path) -> str:
    """MLFLOW_TRACKING_URI if the user set it, else params' URI with a relative SQLite path made absolute.

    Read when called: medpipe never leaves its own store in os.environ (see setup_tracking), so the
    variable holds the user's choice, or nothing.

    Args:
        registry_params: The register section (its tracking_uri).
        base: The project folder a relative SQLite path is resolved against (its folder is created).

    Returns:
        The tracking URI.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or registry_params.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        db = base / uri[len(prefix) :]
        db.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(db)
    return uri


def setup_tracking(registry_params: RegisterParams, base: Path) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id.

    Args:
        registry_params: The register section (tracking URI, experiment, artifact root).
        base: The project folder.

    Returns:
        The experiment id.
    """
    import mlflow

    user = _env.user_uris()
    uri = tracking_uri(registry_params, base)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # else the registry keeps the first store this process used
    _env.restore_user_uris(user)  # MLflow exported the URIs to os.environ; child processes must not inherit them
    experiment = mlflow.get_experiment_by_name(registry_params.experiment)
    if experiment is not None:
        return experiment.experiment_id
    local = uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri
    artifacts = (base / registry_params.artifact_root).resolve().as_uri() if local else None
    return mlflow.create_experiment(registry_params.experiment, artifact_location=artifacts)


def lost_insert_race(error: BaseException) -> bool:
    """Whether an MLflow store call failed on a UNIQUE constraint (another process inserted the same row first).

    MLflow's SQL store looks a dataset up, then inserts it, outside one transaction: two runs logging a new
    data version at once (parallel tune trials, a scheduled run beside a manual one) both insert, and the
    later one fails; a second try finds the row and links to it.

    Args:
        error: What the store call raised.

    Returns:
        True when an IntegrityError of SQLAlchemy is among its causes.
    """
    from sqlalchemy.exc import IntegrityError

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, IntegrityError):
            return True
        cause = cause.__cause__
    return False


# Every complete version has these (versions made since the signature also medpipe.task_signature and
# medpipe.model_sha256, written in the same registry call); a version missing one was cut short.
COMPLETE_TAGS = (
    "medpipe.weights_sha256",
    "medpipe.data_md5",
    "medpipe.params_md5",
    "medpipe.classes",
    "medpipe.promotion",
)
PENDING = "pending"  # medpipe.promotion of a version the gate has not decided on yet


def task_signature(classes: list[str], preprocessing: PreprocessParams) -> dict:
    """What a model version is a model *of*: its classes in order and the input it takes.

    Args:
        classes: Class names in output order.
        preprocessing: The preprocessing it was trained with.

    Returns:
        `{"classes", "size", "color", "normalize"}`, stored as the tag `medpipe.task_signature`.
    """
    return {
        "classes": list(classes),
        "size": preprocessing.size,
        "color": preprocessing.color,
        "normalize": preprocessing.normalize,
    }


def version_signature(version) -> dict:
    """A registered version's task signature (versions from before the tag: their classes only).

    Args:
        version: An MLflow ModelVersion.

    Returns:
        The `medpipe.task_signature` dict, or `{"classes": [...]}` for older versions.
    """
    if "medpipe.task_signature" in version.tags:
        return json.loads(version.tags["medpipe.task_signature"])
    return {"classes": _classes(version)}


def signature_conflict(candidate: dict, champion: dict, champion_version: int, model_name: str) -> str | None:
    """Why two versions cannot be compared by the gate (different classes), else None.

    Input size, colour and normalisation may differ: the gate scores each version through its own
    preprocessing on the same test images.

    Args:
        candidate: The new version's task signature.
        champion: The champion's task signature.
        champion_version: The champion's version number (for the message).
        model_name: The registered model's name (for the message).

    Returns:
        The reason, or None when the classes agree (or the champion names none).
    """
    if candidate.get("classes") == champion.get("classes") or not champion.get("classes"):
        return None
    return (
        f"classifies {', '.join(candidate['classes'])} but @champion version {champion_version} of "
        f"'{model_name}' classifies {', '.join(champion['classes'])}: a different task. Register it under its "
        f"own name (--set register.model_name={model_name}-{'-'.join(candidate['classes'])[:40]}) or train "
        f"on data with the champion's classes"
    )


def is_complete(version) -> bool:
    """Whether a version carries every tag medpipe writes at registration (older partial ones do not).

    Args:
        version: An MLflow ModelVersion.

    Returns:
        True when every COMPLETE_TAGS tag is there.
    """
    return all(k in version.tags for k in COMPLETE_TAGS)


def file_sha256(*paths: Path) -> str:
    """sha256 over files' bytes, in order: what a model version's artifact must still hold to be trusted.

    Args:
        *paths: The files, in order.

    Returns:
        The hex digest over each file's sha256.
    """
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def find_version(uri: str, registry_params: RegisterParams, base: Path):
    """The registry's ModelVersion for `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `models:/NAME/latest`
    (the newest complete version).

    Args:
        uri: The model URI.
        registry_params: The register section (where the registry is).
        base: The project folder.

    Returns:
        The MLflow ModelVersion.

    Raises:
        MedpipeError: no such version, alias or model, or no complete version for `latest`.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.errors import MedpipeError

    setup_tracking(registry_params, base)
    client = mlflow.MlflowClient()
    name, _, ref = uri.removeprefix("models:/").replace("@", "/@").partition("/")
    try:
        if ref.startswith("@"):
            return client.get_model_version_by_alias(name, ref[1:])
        if ref in ("", "latest"):
            complete = [v for v in client.search_model_versions(f"name='{name}'") if is_complete(v)]
            if not complete:
                raise MedpipeError(uri, "no complete registered version")
            return max(complete, key=lambda v: int(v.version))
        return client.get_model_version(name, ref)
    except (MlflowException, ValueError):
        raise MedpipeError(uri, "no such registered model version") from None


def model_uri(registry_params: RegisterParams, ref: str | int = "@champion") -> str:
    """`models:/<register.model_name>@alias` or `/<version>`: the default model of every command.

    Args:
        registry_params: The register section (its model_name).
        ref: An alias starting with `@`, or a version number.

    Returns:
        The model URI.
    """
    ref = str(ref)
    return f"models:/{registry_params.model_name}{ref if ref.startswith('@') else '/' + ref}"


def load_classifier(uri: str, registry_params: RegisterParams, base: Path, preprocessing: PreprocessParams):
    """The raw-image classifier behind a registered version (`.model`, `.classes`, `.pp`) and its number.

    Nothing from the artifact store is unpickled or executed: the version's Keras file is loaded in
    safe mode and its serving.json read as JSON, by this installed medpipe's code; their sha256 must
    match the version's `medpipe.model_sha256` tag. Versions logged before the raw-image pyfunc
    (Keras flavour) get their class names from their tags and `preprocessing` fitted to their input.

    Args:
        uri: The model URI (see find_version).
        registry_params: The register section (where the registry is).
        base: The project folder.
        preprocessing: The preprocessing for legacy Keras-flavour versions (fitted to their input).

    Returns:
        The classifier and the version number.

    Raises:
        MedpipeError: no such version, no model in its artifacts, or artifacts changed since registration.
    """
    import tempfile

    import mlflow

    version = find_version(uri, registry_params, base)
    with tempfile.TemporaryDirectory(prefix="medpipe-model-") as tmp:  # loaded into memory, then removed
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{version.name}/{version.version}", dst_path=tmp))
        return _load_folder(folder, version, preprocessing), int(version.version)


def _load_folder(folder: Path, version, preprocessing: PreprocessParams):
    """The classifier in a downloaded model folder (see load_classifier)."""
    import yaml

    from pipeline.errors import MedpipeError
    from pipeline.model import input_params, load_model
    from pipeline.serving import RawImageClassifier

    flavors = (yaml.safe_load((folder / "MLmodel").read_text()) or {}).get("flavors", {})
    where = f"{version.name} version {version.version}"
    if "keras" in flavors:  # legacy: the Keras flavour's own .keras file
        files = sorted(folder.rglob("*.keras"))
        if not files:
            raise MedpipeError(where, "no .keras file in its artifacts")
        model = load_model(files[0])
        classes = _classes(version) or [str(i) for i in range(model.output_shape[-1])]
        return SimpleNamespace(model=model, classes=classes, pp=input_params(model, preprocessing))
    artifacts = flavors.get("python_function", {}).get("artifacts", {})
    try:
        keras_file, config = (folder / artifacts[k]["path"] for k in ("keras_model", "config"))
    except (KeyError, TypeError):
        raise MedpipeError(where, "not a medpipe raw-image model (no keras_model/config artifacts)") from None
    expected = version.tags.get("medpipe.model_sha256")
    if expected and file_sha256(keras_file, config) != expected:
        raise MedpipeError(
            where,
            "its artifacts changed since registration (sha256 differs from "
            "medpipe.model_sha256): refusing to load them",
        )
    return RawImageClassifier().load(keras_file, config)


def load_registered(uri: str, registry_params: RegisterParams, base: Path):
    """A registered version's Keras model, class names (never empty: versions without names get "0", "1", ...)
    and version number (loaded as load_classifier does).

    Args:
        uri: The model URI (see find_version).
        registry_params: The register section (where the registry is).
        base: The project folder.

    Returns:
        (Keras model, class names, version number).

    Raises:
        MedpipeError: as load_classifier.
    """
    classifier, number = load_classifier(uri, registry_params, base, PreprocessParams())
    return classifier.model, classifier.classes, number


def _classes(version) -> list[str]:
    """A registered version's class names, from its `medpipe.classes` tag ([] when it has none)."""
    return json.loads(version.tags.get("medpipe.classes", "[]"))


def _start_time(pid: int) -> str | None:
    """A live process's start time (clock ticks since boot), None if it is gone (or a zombie)."""
    from pipeline.watchdog import proc_stat

    stat = proc_stat(pid)
    return None if stat is None or stat.state in "ZX" else stat.start


def owner_tags() -> dict[str, str]:
    """Which process holds an MLflow run open (`medpipe.host`, `medpipe.pid`, `medpipe.pid_start`).

    Returns:
        The three tags of this process (`medpipe.pid_start` empty where /proc is unavailable).
    """
    import os
    import socket

    return {
        "medpipe.host": socket.gethostname(),
        "medpipe.pid": str(os.getpid()),
        "medpipe.pid_start": _start_time(os.getpid()) or "",
    }


def close_orphaned_runs(
    registry_params: RegisterParams, base: Path, say: Callable[[str], None] = log.info
) -> list[str]:
    """Mark as KILLED the RUNNING runs of this experiment whose process (on this host) is gone.

    A run killed with SIGKILL cannot end itself; the next medpipe command on the same host does.
    `--resume` reopens such a run and carries on in it. Runs owned by other hosts are left alone.

    Args:
        registry_params: The register section (where the runs are).
        base: The project folder.
        say: Where the one-line notice goes when runs were closed.

    Returns:
        The ids of the runs closed.
    """
    import socket

    import mlflow

    experiment = setup_tracking(registry_params, base)
    client, host, closed = mlflow.MlflowClient(), socket.gethostname(), []
    for run in client.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=200):
        tags = run.data.tags
        if tags.get("medpipe.host") != host or "medpipe.pid" not in tags:
            continue
        if _start_time(int(tags["medpipe.pid"])) != tags.get("medpipe.pid_start"):
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    if closed:
        say(f"closed {len(closed)} MLflow run(s) left RUNNING by a killed medpipe process as KILLED: {closed}")
    return closed


def aliases_of(client, name: str) -> dict[str, int]:
    """The registered model's aliases, alias -> version ({} when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


def check_task(params: Params, ws: Workspace) -> None:
    """Refuse, before any work, a run whose classes differ from the champion's of the same registered model.

    Args:
        params: The run's params (validate.labels, register section).
        ws: The run's workspace.

    Raises:
        ConfigError: naming `register.model_name`, both class lists and what to do.
    """
    import mlflow

    from pipeline.errors import ConfigError

    setup_tracking(params.register_, ws.base)
    client, name = mlflow.MlflowClient(), params.register_.model_name
    number = aliases_of(client, name).get("champion")
    if number is None:
        return
    champion = client.get_model_version(name, str(number))
    mine = {"classes": params.validate_.classes}
    conflict = signature_conflict(mine, version_signature(champion), int(champion.version), name)
    if conflict:
        raise ConfigError("register.model_name", f"this run {conflict}")


if __name__ == "__main__":  # python -m pipeline.registry close-orphans PARAMS_FILE [OVERRIDES_JSON]
    import sys

    from pipeline.config import load_params

    if sys.argv[1:2] == ["close-orphans"]:
        params_file = Path(sys.argv[2])
        params = load_params(params_file, json.loads(sys.argv[3]) if len(sys.argv) > 3 else None)
        close_orphaned_runs(params.register_, params_file.resolve().parent, say=lambda _: None)
