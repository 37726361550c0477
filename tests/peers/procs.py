"""Child processes of the peers: own log file and PID file, stopped by PID only.

Never stop processes by name: parallel test runs on the same machine run the same programs.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

#: Started and not yet stopped (strong references: a forgotten peer is still stopped at exit).
_live: set[Process] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Safety net: stop (by PID) whatever a test started and did not stop."""
    for proc in list(_live):
        proc.stop(grace=2.0)


class ProcessError(RuntimeError):
    """A peer process did not start or behave as expected (the message quotes its log)."""


class Process:
    """One child process with ``<name>.log`` and ``<name>.pid`` in ``workdir``.

    Usable as a context manager (``with Process(...) as p:``) and from pytest fixtures.
    ``start`` may be called again after ``stop`` (the log is appended to).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.workdir = Path(workdir)
        self.env = dict(env) if env else {}
        self.cwd = cwd
        self.log_path = self.workdir / f"{name}.log"
        self.pid_path = self.workdir / f"{name}.pid"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        if self.alive():
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.env)
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(self.cwd or self.workdir),
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self.popen.pid}\n")
        _live.add(self)
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise ProcessError(f"{self.name} was never started")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit code (TimeoutError if it does not)."""
        if self.popen is None:
            raise ProcessError(f"{self.name} was never started")
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{self.name} still running after {timeout:.1f} s") from None
        self.pid_path.unlink(missing_ok=True)
        return rc

    def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` to our PID, wait ``grace`` seconds, then SIGKILL. Returns the exit code.

        Children it leaves behind (Kamailio's workers can hang in a lock when the main
        process quits) are found by their session ID, which is our PID (the process was
        started in a new session), and killed by their PIDs."""
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        self._reap_session(p.pid)
        self.pid_path.unlink(missing_ok=True)
        _live.discard(self)
        return p.returncode

    @staticmethod
    def _reap_session(sid: int, grace: float = 1.0) -> None:
        deadline = time.monotonic() + grace
        while (left := session_members(sid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def session_members(sid: int) -> list[int]:
    """PIDs of the live processes in session ``sid`` (from /proc)."""
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path("/proc", entry.name, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state ppid pgrp session ...
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def wait_until(
    pred: Callable[[], object],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll ``pred`` until it is truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)
