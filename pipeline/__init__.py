"""medpipe: a reproducible training pipeline for CNN classifiers of medical images.

Importing the library changes nothing outside it. Its entry points (the `medpipe` command, the flows,
the benchmarks, the tests) first call `configure_offline()`, which switches off the telemetry of the
tools medpipe drives and sets OpenCV's pixel limit, before those tools load (see `_env`); a program
using the library directly does the same.
"""

from pipeline._env import configure_offline

__all__ = ["__version__", "configure_offline"]
__version__ = "0.1.0"
