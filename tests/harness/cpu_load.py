"""Real CPU load for the admission-control tests: one busy Python process per core."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def busy_cores(count: int | None = None) -> Iterator[list[int]]:
    """``count`` (default: every core) processes spinning at normal priority; their PIDs.
    Each is stopped by its own PID on the way out."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              stdin=subprocess.DEVNULL)
             for _ in range(count or os.cpu_count() or 1)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
