"""Worker processes forked from one template process that has already imported them.

Every worker needs the same code: pjsua2, aiortc, PyAV, cryptography, numpy and the bridge's
own worker modules, about 75 MB once imported, 40 MB of it written to (relocations, Python
objects). A worker started as a process of its own would import all of it again and hold a
private copy. So each pool starts one fork server,
``python -m bridge.sip.forkserver --fd N``, which imports the worker's modules once, moves
what it imported out of the garbage collector's reach (``gc.freeze``: a collection would
otherwise write to every object and unshare its page) and then forks one child per worker.
The children share those pages copy-on-write, and a worker replaced after a crash is forked
in milliseconds instead of importing for a second.

Nothing in the fork server starts a thread, a loop or pjsua2: each child creates its own
pjsua2 endpoint after the fork (:mod:`.worker`).

The protocol on the controller's socket (a socketpair): the controller sends one byte with
the worker's IPC socket attached (SCM_RIGHTS); the server answers ``forked PID`` in order,
and ``exit PID CODE`` when a child ends (CODE as in ``returncode``: negative for a signal).
End of stream in either direction ends the other side: the server exits when the controller
goes (its workers then see end of stream on their IPC sockets and stop), and when the server
dies the controller kills its workers (through pidfds) and counts them as exited.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import traceback
from collections import deque
from pathlib import Path

from . import procstat

log = logging.getLogger(__name__)

#: what the server imports before it forks (everything a worker runs).
PRELOAD = ("bridge.sip.worker",)
START_TIMEOUT_S = 30.0
LOST_EXIT_CODE = 255


def _python_path() -> str:
    """PYTHONPATH that lets the server import the same ``bridge`` package as we do."""
    import bridge

    root = str(Path(bridge.__file__).resolve().parent.parent)
    current = os.environ.get("PYTHONPATH", "")
    return root if not current else f"{root}{os.pathsep}{current}"


def _parent_pid(pid: int) -> int | None:
    try:
        return int(procstat.stat_fields(pid)[procstat.PPID])
    except (OSError, ValueError):
        return None


def _open_pidfd(pid: int, parent: int | None) -> int | None:
    """A pidfd for ``pid`` while it is still the fork server's child; None if it is gone.

    The workers are not our children, so their PIDs can be reused once the fork server has
    reaped them: a pidfd pins the process itself, and checking the parent after opening it
    makes sure it pins our worker and not a newcomer with the same PID."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if parent is not None and _parent_pid(pid) != parent:
        os.close(fd)
        return None
    return fd


class ForkedWorker:
    """One worker process forked by the server: its PID, a pidfd to signal it by, and its
    exit as the server saw it."""

    def __init__(self, pid: int, loop: asyncio.AbstractEventLoop,
                 server_pid: int | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exit: asyncio.Future[int] = loop.create_future()
        self._pidfd = _open_pidfd(pid, server_pid)

    def kill(self) -> None:
        """SIGKILL through the pidfd, so never another process that took over the PID."""
        if self.returncode is None and self._pidfd is not None:
            with contextlib.suppress(OSError):  # ended meanwhile
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def _exited(self, code: int) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.returncode is None:
            self.returncode = code
            self._exit.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)


class ForkServer:
    """The controller's side: starts the server on first use, forks workers through it."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: deque[asyncio.Future[int]] = deque()
        self._workers: dict[int, ForkedWorker] = {}
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    async def fork(self, ipc_socket: socket.socket) -> ForkedWorker:
        """A new worker speaking IPC on ``ipc_socket`` (the caller closes its copy)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            sock = await self._ensure_running()
            answer: asyncio.Future[int] = loop.create_future()
            self._waiting.append(answer)
            socket.send_fds(sock, [b"F"], [ipc_socket.fileno()])
            pid = await asyncio.wait_for(answer, START_TIMEOUT_S)
        return self._workers[pid]

    async def close(self) -> None:
        """Stop the server. The pool has stopped its workers first; any still running
        are killed (nobody would report their exit any more)."""
        sock, self._sock = self._sock, None
        if self._reader is not None:
            # before the socket closes: a pending read must not outlive its descriptor
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if sock is not None:
            sock.close()
        if self._proc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 10)
            if self._proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
            self._proc = None

    async def _ensure_running(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.returncode is None:
            return self._sock
        parent, child = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=_python_path())
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge.sip.forkserver", "--fd", str(child.fileno()),
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, stdout=2,
                env=env)
        finally:
            child.close()
        parent.setblocking(False)
        self._sock = parent
        self._reader = asyncio.get_running_loop().create_task(self._read(parent))
        log.debug("worker fork server started (pid %d)", self._proc.pid)
        return parent

    async def _read(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        buffer = b""
        try:
            while True:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._on_line(line.decode("ascii", "replace").split(), loop)
        except OSError:
            pass
        finally:
            self._lost(sock)

    def _on_line(self, words: list[str], loop: asyncio.AbstractEventLoop) -> None:
        if len(words) == 2 and words[0] == "forked" and self._waiting:
            pid = int(words[1])
            self._workers[pid] = ForkedWorker(pid, loop, self.pid)
            answer = self._waiting.popleft()
            if not answer.done():
                answer.set_result(pid)
        elif len(words) == 3 and words[0] == "exit":
            worker = self._workers.pop(int(words[1]), None)
            if worker is not None:
                worker._exited(int(words[2]))
        else:
            log.warning("worker fork server said %r", " ".join(words))

    def _lost(self, sock: socket.socket) -> None:
        """The server is gone: nobody reports its children's exits any more."""
        if self._sock is sock:
            log.error("worker fork server ended; its workers are stopped")
            self._sock = None
        for worker in self._workers.values():
            worker.kill()
            worker._exited(LOST_EXIT_CODE)
        self._workers.clear()
        while self._waiting:
            answer = self._waiting.popleft()
            if not answer.done():
                answer.set_exception(OSError("the worker fork server ended"))


# ---------------------------------------------------------------- the server process

def _set_name(name: str) -> None:
    """The process name ``top`` and ``ps -o comm`` show (Linux, at most 15 bytes)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME



def _child(fd: int, closing: list[int]) -> None:
    """In the forked child: become a worker; never return."""
    code = 1
    try:
        for other in closing:
            os.close(other)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _set_name("sip-worker")
        from bridge.sip import worker

        code = worker.serve(fd)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(sock: socket.socket) -> None:
    """Fork a worker for every socket received, report every child's exit, until EOF."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
    selector = selectors.EpollSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 8)
                if not msg:
                    return
                for fd in fds:
                    pid = os.fork()
                    if pid == 0:
                        _child(fd, [sock.fileno(), wake_r, wake_w, selector.fileno()])
                    os.close(fd)
                    sock.sendall(f"forked {pid}\n".encode())
            else:
                os.read(wake_r, 512)
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    sock.sendall(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridge.sip.forkserver", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="socket to the controller")
    args = parser.parse_args(argv)
    # The controller decides when we stop (end of stream), also when a terminal's Ctrl-C or
    # a SIGTERM to the whole process group reaches us: dying first would make the controller
    # kill the workers instead of letting them end their calls.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _set_name("sip-forkserver")
    for name in PRELOAD:
        __import__(name)
    gc.collect()
    gc.freeze()
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(True)
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
