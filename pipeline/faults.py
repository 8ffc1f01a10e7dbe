"""Fail points: named places where a test can stop a real medpipe process to kill it there.

Production code calls `point("name")` at moments where a crash must leave a consistent state (after a
scan, after the first shard, after an epoch's checkpoint, after a version is created, between alias
writes). Normally it does nothing. With `$MEDPIPE_FAULT_POINT=name[:n]` set, the n-th time (default
the first) the process reaches `name` it writes its pid to `$MEDPIPE_FAULT_MARKER` and waits until a
file `<marker>.go` appears, so a test can `kill -9` it at exactly that moment, or let it go on.
"""

import os
import time
from collections import Counter
from pathlib import Path

POINT_ENV, MARKER_ENV = "MEDPIPE_FAULT_POINT", "MEDPIPE_FAULT_MARKER"
_reached: Counter[str] = Counter()


def point(name: str) -> None:
    """Pause here if the environment names this fail point (see the module docstring); else nothing.

    Args:
        name: The fail point, e.g. `promote.aliases`.
    """
    wanted, _, nth = os.environ.get(POINT_ENV, "").partition(":")
    if wanted != name:
        return
    _reached[name] += 1
    if _reached[name] != int(nth or 1):
        return
    marker = Path(os.environ[MARKER_ENV])
    marker.write_text(f"{os.getpid()}\n")
    go = marker.with_name(marker.name + ".go")
    while not go.exists():
        time.sleep(0.05)
