"""One medpipe run at a time per project: an OS file lock held for the whole flow."""

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".medpipe.lock"


@contextmanager
def project_lock(base: Path, poll_s: float = 1.0, say: Callable[[str], None] = log.info) -> Iterator[None]:
    """Hold `<base>/.medpipe.lock` exclusively, waiting while another run holds it.

    The OS releases it when its holder exits, even on a crash or kill, so a dead run never blocks
    the next. (Runs on several machines sharing one registry use a Prefect concurrency limit
    instead: see docs/scaling.md.)

    Args:
        base: The project folder.
        poll_s: Seconds between attempts while another run holds it.
        say: Where the one-line waiting notice goes.

    Yields:
        None, while the lock is held.
    """
    path = base / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    say(f"another medpipe run (pid {holder}) holds {path}; waiting for it to finish")
                    waited = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
