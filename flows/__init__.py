"""Prefect flows: wiring of the `pipeline` steps, no ML logic."""

import logging

from pipeline import configure_offline

# An entry point (Prefect workers and deployments import the flows): medpipe's offline defaults and
# Prefect's extra loggers, before Prefect, MLflow or OpenCV load.
configure_offline()

# The library's progress (epoch lines, registrations, waiting for the project lock) is INFO: the flows show it.
logging.getLogger("pipeline").setLevel(logging.INFO)
