"""Serving: the registered model as an MLflow pyfunc that takes raw images and returns labels.

Input: a DataFrame with an `image` column whose cells are encoded PNG/JPEG/DICOM bytes, base64
of them (as a string, or as bytes: MLflow's `instances` form hands a binary column over as its base64
text), or pixel arrays ((H, W) or (H, W, C); uint8, uint16, or floats in [0, 1]); a bare list or
array of such cells, or a list of {"image": cell} records, works too. Each image goes through the
very preprocessing the model was trained with (stored beside it, with its caps preprocess.max_pixels
and max_file_mb, checked on the header before decoding), then the model (whose first layer
normalises). Output: one row per image, `label` and the probability of each class. A bad image (over
a cap, or undecodable) is a 400 naming the row and the reason.
"""

import base64
import binascii
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.backend import active
from pipeline.config import PreprocessParams
from pipeline.errors import MedpipeError
from pipeline.limits import kind, pixel_count

INPUT_COLUMN = "image"


def _pixels_or_bytes(cell, row: int) -> bytes | np.ndarray:
    """A cell as encoded bytes (base64 decoded when a string, or when bytes that are no PNG, JPEG or
    DICOM but base64 text) or as a pixel array."""
    if isinstance(cell, (bytes, bytearray, memoryview)):
        data = bytes(cell)
        if data and kind(data[:132]) is None:
            try:
                return base64.b64decode(b"".join(data.split()), validate=True) or data  # line breaks allowed
            except (binascii.Error, ValueError):
                pass  # not base64 either: the decoder says what it is not
        return data
    if isinstance(cell, str):
        try:
            return base64.b64decode("".join(cell.split()), validate=True)
        except (binascii.Error, ValueError):
            raise MedpipeError(f"image[{row}]", "a string must be a base64-encoded PNG, JPEG or DICOM file") from None
    pixels = np.asarray(cell)
    if pixels.dtype == object or pixels.ndim not in (2, 3) or pixels.dtype.kind not in "uif":
        raise MedpipeError(
            f"image[{row}]",
            f"expected image bytes, base64 or an (H, W[, C]) pixel array, "
            f"got {type(cell).__name__} of shape {pixels.shape}",
        )
    return pixels


def served_preprocessing(logged: dict) -> PreprocessParams:
    """The preprocessing a served model was logged with (its serving.json), as params.

    Keys added to medpipe after the model was logged take the value that reproduces how it was trained:
    `jpeg_reduced` off (before it existed, JPEGs decoded at full size).

    Args:
        logged: serving.json's `preprocess`.

    Returns:
        The preprocess params.
    """
    return PreprocessParams.model_validate({"jpeg_reduced": False, **logged})


def model_input(cell, row: int, preprocessing: PreprocessParams) -> np.ndarray:
    """One cell as a model input: float32 (size, size, channels) in [0, 1].

    Args:
        cell: Encoded image bytes, their base64, or a pixel array.
        row: The cell's row (names it in errors as `image[row]`).
        preprocessing: The preprocessing the model was trained with (and its caps).

    Returns:
        The preprocessed image, float32 in [0, 1].

    Raises:
        MedpipeError: the cell is not an image, over a cap, or cannot be decoded.
    """
    from pipeline.preprocess import pixels_to_uint8, prepare_image, prepare_pixels

    name = f"image[{row}]"
    value = _pixels_or_bytes(cell, row)
    try:
        if isinstance(value, bytes):
            return prepare_image(Path(name), preprocessing, data=value).astype(np.float32) / 255.0
        if value.size > preprocessing.max_pixels:
            raise MedpipeError(
                name,
                f"pixel array of shape {value.shape} = {pixel_count(value.size)} exceeds the "
                f"cap of {pixel_count(preprocessing.max_pixels)} (preprocess.max_pixels)",
            )
        if value.dtype.kind in "iu" and value.dtype != np.uint8:
            value = value.astype(np.uint16)
        elif value.dtype.kind == "f":
            value = value.astype(np.float32)
        return prepare_pixels(pixels_to_uint8(value, preprocessing.color), preprocessing).astype(np.float32) / 255.0
    except MedpipeError:
        raise  # already names the row
    except Exception as err:  # any other decode failure is the caller's image too: HTTP 400, no traceback
        raise MedpipeError(name, f"cannot be decoded ({err.__class__.__name__})") from None


def cells(data) -> list:
    """The image cells of a pyfunc input: the `image` column of a DataFrame, or a list/array of images.

    Args:
        data: A DataFrame, a dict with an `image` list, a list of `{"image": cell}` records, or a list/array
            of cells.

    Returns:
        The cells, in order.

    Raises:
        MedpipeError: a DataFrame without an `image` column.
    """
    if isinstance(data, pd.DataFrame):
        if INPUT_COLUMN not in data.columns:
            raise MedpipeError("input", f"expected a column named '{INPUT_COLUMN}', got {list(data.columns)}")
        return list(data[INPUT_COLUMN])
    if isinstance(data, dict) and INPUT_COLUMN in data:
        return list(data[INPUT_COLUMN])
    if isinstance(data, list) and data and all(isinstance(r, dict) and INPUT_COLUMN in r for r in data):
        return [r[INPUT_COLUMN] for r in data]  # records, e.g. [{"image": ...}, ...]
    return list(data)


def predict_table(model, classes: list[str], images: list, preprocessing: PreprocessParams) -> pd.DataFrame:
    """Labels and class probabilities of raw images.

    Args:
        model: The Keras model.
        classes: Class names in output order.
        images: The cells (see model_input).
        preprocessing: The preprocessing the model was trained with.

    Returns:
        One row per image: `label` and a float64 probability column per class.

    Raises:
        MedpipeError: a cell that is not a usable image (see model_input).
    """
    x = np.stack([model_input(cell, i, preprocessing) for i, cell in enumerate(images)]) if images else np.zeros((0,))
    proba = np.asarray(model.predict(x, verbose=0), dtype=np.float64) if len(x) else np.zeros((0, len(classes)))
    return pd.DataFrame(
        {"label": [classes[i] for i in proba.argmax(axis=1)], **{c: proba[:, i] for i, c in enumerate(classes)}}
    )


def _python_model_base():
    import mlflow

    return mlflow.pyfunc.PythonModel


class RawImageClassifier(_python_model_base()):  # type: ignore[misc]  # mlflow's base, imported lazily
    """medpipe's Keras model with its preprocessing: raw images in, labels and probabilities out."""

    def load_context(self, context) -> None:
        """MLflow's hook: load the version's artifacts (see load).

        Args:
            context: MLflow's PythonModelContext (artifacts `keras_model` and `config`).
        """
        self.load(Path(context.artifacts["keras_model"]), Path(context.artifacts["config"]))

    def load(self, keras_file: Path, config_file: Path) -> "RawImageClassifier":
        """Load the Keras file (safe mode: no code in it runs) and the preprocessing it was trained with.

        Args:
            keras_file: The .keras model file.
            config_file: serving.json (classes and preprocess params).

        Returns:
            This classifier, loaded.
        """
        config = json.loads(config_file.read_text())
        if active() is None:  # a served model's own process: the backend it was trained on
            os.environ.setdefault("KERAS_BACKEND", config.get("backend", "tensorflow"))
        from pipeline.model import load_model

        self.model = load_model(keras_file)
        self.classes, self.pp = config["classes"], served_preprocessing(config["preprocess"])
        return self

    # The DataFrame hint tells MLflow not to infer a schema from it (the signature is explicit) and so not to
    # print its advice to add type hints when this class is defined.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """MLflow's predict: labels and class probabilities of raw images (see predict_table).

        Args:
            context: MLflow's PythonModelContext (unused).
            model_input: The images (see cells).
            params: MLflow inference params (unused).

        Returns:
            One row per image: `label` and a probability column per class.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE (HTTP 400) for a bad image, INTERNAL_ERROR otherwise.
        """
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

        try:
            return predict_table(self.model, self.classes, cells(model_input), self.pp)
        except MedpipeError as err:  # a bad image is the caller's error: HTTP 400 with the one-line reason
            raise _served_error()(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception as err:  # anything else: a 500 that names the error, without a server stack trace
            raise _served_error()(
                f"internal error while predicting ({err.__class__.__name__})", error_code=INTERNAL_ERROR
            ) from None


def _served_error():
    """An MlflowException whose message the scoring server cannot rewrite: MLflow 3.17 prefixes the
    request's repr to a predict error's message, echoing (a part of) the caller's data in the answer."""
    from mlflow.exceptions import MlflowException

    class ServedError(MlflowException):
        @property
        def message(self) -> str:
            return self._message

        @message.setter
        def message(self, value: str) -> None:
            if not hasattr(self, "_message"):
                self._message = value

    return ServedError


def log_pyfunc(
    keras_path: Path,
    classes: list[str],
    preprocessing: PreprocessParams,
    example: bytes,
    workdir: Path,
    backend: str = "tensorflow",
    **kwargs,
):
    """Log the model as a raw-image pyfunc to the active run: the Keras file, its preprocessing
    (serving.json) and medpipe's code, as models from code (pipeline/served_model.py), so no pickle.

    Args:
        keras_path: The trained .keras file.
        classes: Class names in output order.
        preprocessing: The preprocessing it was trained with.
        example: An encoded image for the input example.
        workdir: Where serving.json is written.
        backend: The Keras backend it was trained on: the one a served model starts (KERAS_BACKEND wins).
        **kwargs: Passed on to mlflow.pyfunc.log_model (e.g. registered_model_name).

    Returns:
        MLflow's ModelInfo.
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    config = workdir / "serving.json"
    content = {"classes": classes, "preprocess": preprocessing.model_dump(mode="json"), "backend": backend}
    config.write_text(json.dumps(content, indent=2))
    signature = ModelSignature(
        Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
        Schema([ColSpec(DataType.string, "label"), *[ColSpec(DataType.double, c) for c in classes]]),
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("served_model.py")),
        artifacts={"keras_model": str(keras_path), "config": str(config)},
        code_paths=[str(Path(__file__).parent)],
        signature=signature,
        input_example=pd.DataFrame({INPUT_COLUMN: [example]}),
        **kwargs,
    )


def predict_files(classifier, paths: list[Path]) -> list[dict]:
    """What `medpipe predict` prints per image: label and class probabilities (4 places), each file through
    the classifier's own preprocessing.

    Args:
        classifier: A loaded classifier (`registry.load_classifier`): `.model`, `.classes`, `.pp`.
        paths: Image files (PNG, JPEG or DICOM).

    Returns:
        One `{"image", "label", "probabilities"}` dict per file, in order.
    """
    from pipeline.preprocess import prepare_image

    x = np.stack([prepare_image(path, classifier.pp) for path in paths]).astype(np.float32) / 255.0
    proba = np.asarray(classifier.model.predict(x, verbose=0), dtype=np.float64)
    return [
        {
            "image": str(path),
            "label": classifier.classes[int(pr.argmax())],
            "probabilities": {c: round(float(v), 4) for c, v in zip(classifier.classes, pr)},
        }
        for path, pr in zip(paths, proba)
    ]
