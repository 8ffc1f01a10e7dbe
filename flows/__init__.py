"""Prefect flows: wiring of the `pipeline` steps, no ML logic."""

import logging

import pipeline  # noqa: F401  (medpipe's offline defaults and Prefect's extra loggers, before Prefect loads)

# The library's progress (epoch lines, registrations, waiting for the project lock) is INFO: the flows show it.
logging.getLogger("pipeline").setLevel(logging.INFO)
