"""The `medpipe` command (cli.main:main); it calls pipeline/ and flows/ and holds no logic of its own."""

from pipeline import configure_offline

# An entry point: medpipe's offline defaults, before Prefect, MLflow, DVC, GX, TF or OpenCV load.
configure_offline()
