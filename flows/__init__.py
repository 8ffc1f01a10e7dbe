"""Prefect flows: wiring of the `pipeline` steps, no ML logic."""
