"""Process-wide settings that must be in place before Prefect, MLflow, DVC, GX or TF import."""

import os

OFFLINE_DEFAULTS: dict[str, str] = {
    # No telemetry or analytics, ever: medpipe runs offline next to patient data.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The ephemeral Prefect server can take > 20 s to start on a loaded 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # No "Downloading artifacts" progress bars in logs (the gate and evaluation read artifacts back).
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # OpenCV's own pixel limit, read once when cv2 loads: the backstop behind pipeline.limits' header checks,
    # for formats whose header medpipe does not read (BMP, TIFF, WebP...). 2**28 = 16384^2 (OpenCV: 2**30);
    # raise it with preprocess.max_pixels beyond that.
    "OPENCV_IO_MAX_IMAGE_PIXELS": str(2**28),
    # The library logs through logging.getLogger("pipeline.<module>"); Prefect shows those loggers in its
    # console and UI when they are its extra loggers (read when Prefect is first imported).
    "PREFECT_LOGGING_EXTRA_LOGGERS": "pipeline",
    # ... outside a flow run (a DVC stage, a library call) those records are for the console only.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def user_uris() -> dict[str, str | None]:
    """The user's MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI as they are now (None: not set).

    Returns:
        Variable name → value, to hand to `restore_user_uris` after mlflow.set_tracking_uri.
    """
    return {key: os.environ.get(key) for key in URI_VARIABLES}


def restore_user_uris(saved: dict[str, str | None]) -> None:
    """Put the user's MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI back (or remove them).

    mlflow.set_tracking_uri/set_registry_uri export the store to os.environ for child processes;
    without this, every program medpipe starts afterwards (a reproduce step, a served model, DVC)
    would inherit whichever workspace's store this process used last, and the next tracking_uri()
    would take it for the user's choice.

    Args:
        saved: What `user_uris()` returned before MLflow was pointed elsewhere.
    """
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


VERBOSE_ENV = "MEDPIPE_VERBOSE"
# What `medpipe -v` shows again: TensorFlow's C++ log and MLflow's artifact progress bars (and, read from
# VERBOSE_ENV, Dask's cluster chatter). Telemetry stays off.
VERBOSE_VALUES: dict[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "0", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "true",
                                  VERBOSE_ENV: "1"}  # fmt: skip


def configure_verbose() -> None:
    """Show the third-party messages medpipe hides by default, in this process and the ones it starts."""
    os.environ.update(VERBOSE_VALUES)


def verbose() -> bool:
    """Whether `medpipe -v` asked for third-party messages (see configure_verbose)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def configure_offline() -> None:
    """Set medpipe's offline defaults, leaving any value the user set alone."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
