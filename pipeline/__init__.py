"""medpipe: a reproducible training pipeline for CNN classifiers of medical images.

Importing the package switches off the telemetry of the tools it drives (see `_env`).
"""

from pipeline._env import configure_offline

configure_offline()

__version__ = "0.1.0"
