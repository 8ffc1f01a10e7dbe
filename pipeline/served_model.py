"""The served classifier as MLflow *models from code*: this file is logged with every version and run
by MLflow to build the model, so no pickle is written or read (no `python_model.pkl`).

medpipe's own consumers (the gate, predict, explain, label suggest) never run this file from the
artifact store: they load the version's Keras file and serving.json directly (pipeline.registry).
"""

import mlflow

from pipeline.serving import RawImageClassifier

mlflow.models.set_model(RawImageClassifier())
