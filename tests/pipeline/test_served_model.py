"""pipeline/served_model.py: the models-from-code file MLflow runs sets a fresh RawImageClassifier, no pickle."""

import ast
from pathlib import Path

import pytest

import pipeline.serving

SERVED = Path(pipeline.serving.__file__).with_name("served_model.py")


@pytest.fixture
def served(monkeypatch):
    """The model MLflow builds from the file, run as its pyfunc loader runs it (a fresh module each time)."""
    import mlflow.models.model
    from mlflow.models.utils import _load_model_code_path

    monkeypatch.setattr(mlflow.models.model, "__mlflow_model__", None)  # set_model's global, restored afterwards
    return _load_model_code_path(str(SERVED), None)


def test_running_the_file_sets_a_fresh_raw_image_classifier(served):
    assert type(served) is pipeline.serving.RawImageClassifier
    assert vars(served) == {}  # no state of its own: everything comes from the version's artifacts


def test_the_file_imports_only_mlflow_and_the_serving_module():
    imported = set()
    for node in ast.walk(ast.parse(SERVED.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"mlflow", "pipeline.serving"}  # no pickle, cloudpickle or joblib
