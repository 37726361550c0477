"""Controller side of one worker process: spawn, requests/replies, heartbeat, death.

The pool owns one :class:`WorkerProcess` per worker slot and makes a new one when a worker
dies. Everything here runs in the controller's asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from . import ipc
from .config import WorkerConfig
from .errors import SipError, WorkerDied, error_from_code
from .forkserver import ForkedWorker, ForkServer

log = logging.getLogger(__name__)

_REPLIES = (ipc.Reply, ipc.MessageOutcome, ipc.AudioReport)
EXIT_WAIT_S = 5.0


class WorkerProcess:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        on_message: Callable[[WorkerProcess, Any], None],
        on_dead: Callable[[WorkerProcess, str], None],
        heartbeat_interval_s: float,
        heartbeat_timeout_s: float,
        forks: ForkServer,
    ) -> None:
        self.config = config
        self.index = config.index
        self._forks = forks
        self._on_message = on_message
        self._on_dead = on_dead
        self._interval = heartbeat_interval_s
        self._timeout = heartbeat_timeout_s
        self.proc: ForkedWorker | None = None
        self.channel: ipc.Channel | None = None
        self.ready: ipc.Ready | None = None
        self.alive = False
        self.started_at = 0.0
        self.calls: set[str] = set()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._req = itertools.count(1)
        self._ping = itertools.count(1)
        self._last_pong = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._ready_fut: asyncio.Future[ipc.Ready] | None = None
        self._dead_reason = ""

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def usable(self) -> bool:
        return self.alive and self.ready is not None

    @property
    def load(self) -> int:
        return len(self.calls)

    @property
    def max_calls(self) -> int:
        return self.ready.max_calls if self.ready else self.config.max_calls

    # ------------------------------------------------------------ life
    async def start(self, timeout_s: float) -> ipc.Ready:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        try:
            self.proc = await self._forks.fork(child)
        finally:
            child.close()
        self.started_at = time.monotonic()
        self.alive = True
        self.channel = await ipc.Channel.from_socket(parent)
        self._ready_fut = loop.create_future()
        self._ready_fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._tasks.append(loop.create_task(self._read_loop()))
        self._tasks.append(loop.create_task(self._watch_exit()))
        self.channel.send(ipc.Configure(config=self.config))
        try:
            self.ready = await asyncio.wait_for(asyncio.shield(self._ready_fut), timeout_s)
        except TimeoutError:
            self.kill()
            raise SipError(f"worker {self.index} did not start within {timeout_s:.0f} s") from None
        self._last_pong = time.monotonic()
        self._tasks.append(loop.create_task(self._heartbeat()))
        log.info("worker %d (pid %d) ready: %s", self.index, self.pid, ", ".join(
            f"{t.transport} {t.host}:{t.port}" for t in self.ready.transports))
        return self.ready

    def kill(self) -> None:
        """SIGKILL (through the worker's pidfd)."""
        if self.proc is not None:
            self.proc.kill()

    async def wait_exit(self, timeout_s: float = EXIT_WAIT_S) -> int | None:
        if self.proc is None:
            return None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.kill()
            return await self.proc.wait()

    async def shutdown(self, timeout_s: float = 20.0) -> None:
        """Ask for a clean stop (calls ended, unregistered); kill if it takes too long."""
        if self.alive and self.channel is not None:
            with contextlib.suppress(SipError):
                await self.request(lambda req: ipc.Shutdown(req=req), timeout_s)
        code = await self.wait_exit(timeout_s)
        level = logging.INFO if code == 0 else logging.WARNING
        log.log(level, "worker %d (pid %d) exited with code %s", self.index, self.pid, code)
        self._mark_dead("stopped")
        for task in self._tasks:
            task.cancel()
        if self.channel is not None:
            await self.channel.close()

    # ------------------------------------------------------------ requests
    async def request(self, build: Callable[[int], Any], timeout_s: float = 10.0) -> Any:
        """Send a command; return its reply (raises the worker's typed error)."""
        if not self.alive or self.channel is None:
            raise WorkerDied(f"worker {self.index} is not running")
        req = next(self._req)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req] = fut
        try:
            self.channel.send(build(req))
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise SipError(f"worker {self.index} did not answer within {timeout_s:.0f} s") from None
        except ipc.ChannelClosed:
            raise WorkerDied(f"worker {self.index} is gone") from None
        finally:
            self._pending.pop(req, None)

    # ------------------------------------------------------------ tasks
    async def _read_loop(self) -> None:
        assert self.channel is not None
        reason = "IPC closed"
        try:
            while True:
                msg = await self.channel.recv()
                if isinstance(msg, _REPLIES):
                    self._resolve(msg)
                elif isinstance(msg, ipc.Pong):
                    self._last_pong = time.monotonic()
                    if msg.pj_loop_age_ms > self._timeout * 1000:
                        log.error("worker %d: pjsua2 loop stalled for %d ms; killing", self.index,
                                  msg.pj_loop_age_ms)
                        self.kill()
                elif isinstance(msg, ipc.Ready):
                    if self._ready_fut is not None and not self._ready_fut.done():
                        self._ready_fut.set_result(msg)
                elif isinstance(msg, ipc.Fatal):
                    reason = f"failed to start: {msg.error}"
                    log.error("worker %d %s", self.index, reason)
                    if self._ready_fut is not None and not self._ready_fut.done():
                        self._ready_fut.set_exception(SipError(f"worker {self.index} {reason}"))
                else:
                    try:
                        self._on_message(self, msg)
                    except Exception:
                        log.exception("worker %d: handling %s failed", self.index,
                                      type(msg).__name__)
        except ipc.ChannelClosed:
            pass
        except Exception:
            log.exception("worker %d: IPC read failed", self.index)
            reason = "IPC error"
            self.kill()
        code = await self.wait_exit()
        self._mark_dead(f"{reason}, exit code {code}")

    async def _watch_exit(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        # give the reader a moment to deliver what the worker said last
        await asyncio.sleep(0.2)
        self._mark_dead(f"exited with code {code}")

    async def _heartbeat(self) -> None:
        last_tick = time.monotonic()
        while self.alive and self.channel is not None:
            await asyncio.sleep(self._interval)
            if not self.alive:
                return
            now = time.monotonic()
            if now - last_tick > self._interval + self._timeout / 2:
                # Our own loop was stalled: the worker's pongs may still sit unread in the
                # socket. Judge the worker from now on, not by our delay.
                log.warning("controller loop stalled for %.1f s; worker %d gets a fresh "
                            "heartbeat window", now - last_tick, self.index)
                self._last_pong = now
            last_tick = now
            if now - self._last_pong > self._timeout:
                log.error("worker %d (pid %d): no heartbeat for %.1f s; killing", self.index,
                          self.pid, time.monotonic() - self._last_pong)
                self.kill()
                return
            with contextlib.suppress(ipc.ChannelClosed, RuntimeError):
                self.channel.send(ipc.Ping(seq=next(self._ping)))

    def _resolve(self, msg: Any) -> None:
        fut = self._pending.get(msg.req)
        if fut is None or fut.done():
            return
        if isinstance(msg, ipc.Reply) and not msg.ok:
            fut.set_exception(error_from_code(msg.code, msg.error))
        else:
            fut.set_result(msg)

    def _mark_dead(self, reason: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self._dead_reason = reason
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkerDied(f"worker {self.index} died: {reason}"))
        if self._ready_fut is not None and not self._ready_fut.done():
            self._ready_fut.set_exception(SipError(f"worker {self.index} {reason}"))
        self._on_dead(self, reason)
