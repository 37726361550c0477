"""The controller's pool of SIP/media workers.

```python
pool = WorkerPool(sip_config)
pool.on_incoming_call = handle_incoming      # async def (CallHandle) -> None
pool.on_message = handle_message             # async def (IncomingMessage) -> None
pool.on_link_state = handle_link             # async def (LinkStatus) -> None (optional)
pool.on_extension_state = handle_ext         # async def (ExtensionStatus) -> None (optional)
await pool.start()
call = await pool.make_call("acme", "101", from_user="alice=example.org", from_display="Alice")
async for event in call.events(): ...        # Ringing, EarlyMedia, Answered, Dtmf, Held,
                                             # Transferred, MediaChanged, Ended | Failed
await call.hold(True); await call.hold(False) # SIP re-INVITE a=sendonly / a=sendrecv
await call.hangup()
result = await pool.send_message("acme", "101", "hello", from_user="alice=example.org")
pool.link_states()                           # {"acme": LinkStatus(state="registered", ...)}
pool.extension_states()                      # {("acme", "101"): ExtensionStatus("busy"), ...}
await pool.stop()
```

The pool starts N workers (``workers: auto`` = one per core), forked from its fork server
(:mod:`.forkserver`), keeps a heartbeat with each,
kills one that stops answering, reports each of a dead worker's calls as :class:`Failed`, and
starts a replacement on the same ports (after a back-off when it keeps dying). Outbound calls
go to the least-loaded worker with a free slot; the per-company ``max_calls`` is enforced
here for both directions (inbound over the limit: 486). An inbound call nobody handles
(no ``on_incoming_call``) is rejected with 480. With ``min_idle_cpu`` set, a new call is
refused while the machine's CPU is nearly full (:mod:`.admission`; outbound:
:class:`Overloaded`, inbound: 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from . import ipc, media_ipc
from .admission import (
    Admission,
    CpuIdle,
    LeastIdle,
    cgroup_times_reader,
    tightest_cgroup_quota,
    unseen_share,
)
from .config import LinkConfig, SipConfig
from .errors import (
    CapacityExceeded,
    CompanyBusy,
    MessageTooLarge,
    Overloaded,
    SipError,
    UnknownCompany,
    WorkerUnavailable,
)
from .events import (
    Answered,
    AudioStats,
    CallEvent,
    Dtmf,
    EarlyMedia,
    Ended,
    ExtensionStatus,
    Failed,
    Held,
    IncomingCallInfo,
    IncomingMessage,
    LinkStatus,
    MediaChanged,
    MessageResult,
    Ringing,
    Transferred,
    WorkerInfo,
)
from .forkserver import ForkServer
from .handles import CallHandle
from .sipmsg import check_user
from .workerproc import WorkerProcess

log = logging.getLogger(__name__)

IncomingCallHandler = Callable[[CallHandle], Awaitable[None] | None]
#: returns the SIP status for the PBX (200 delivered, 404 no such user …); None means 200
MessageHandler = Callable[[IncomingMessage], Awaitable[int | None] | int | None]
LinkStateHandler = Callable[[LinkStatus], Awaitable[None] | None]
ExtensionStateHandler = Callable[[ExtensionStatus], Awaitable[None] | None]

RESTART_BACKOFF_MAX_S = 60.0
#: a worker that lived at least this long restarts at once; quicker deaths back off.
STABLE_AFTER_S = 30.0
MESSAGE_TIMEOUT_S = 60.0
#: how long an ended call is remembered for the worker lines and counts that follow its end.
ENDED_MEMORY_S = 30.0


class WorkerPool:
    def __init__(self, config: SipConfig) -> None:
        config.validate()
        self.config = config
        self.on_incoming_call: IncomingCallHandler | None = None
        self.on_message: MessageHandler | None = None
        self.on_link_state: LinkStateHandler | None = None
        #: extension states from the PBX (links with ``presence`` on), in the order reported
        self.on_extension_state: ExtensionStateHandler | None = None
        #: called with each call's audio frame counts when its media closes (sync).
        self.on_audio_stats: Callable[[CallHandle, AudioStats], None] | None = None
        self._workers: dict[int, WorkerProcess] = {}
        self._calls: dict[str, CallHandle] = {}
        #: calls that ended recently, for the log lines and counts that follow their end.
        self._ended: dict[str, CallHandle] = {}
        self._links: dict[str, LinkStatus] = {}
        self._extensions: dict[tuple[str, str], ExtensionStatus] = {}
        self._restarts: dict[int, int] = {}
        self._quick_deaths: dict[int, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopping = False
        self._ids = itertools.count(1)
        self._tag = secrets.token_hex(3)
        self._admission: Admission | None = None
        self._forks = ForkServer()
        #: calls refused because the machine was overloaded, by direction
        self.overload_refusals = {"outbound": 0, "inbound": 0}

    # ------------------------------------------------------------ life
    async def start(self) -> None:
        """Start every worker and wait until all are ready (SipError if one cannot start)."""
        if self._started:
            return
        self._started = True
        self._stopping = False
        for link in self.config.links:
            if link.mode == "register":
                self._links[link.company] = LinkStatus(
                    company=link.company, state="registering",
                    worker=self.config.home_worker(link.company))
        self._start_admission()
        count = self.config.worker_count()
        results = await asyncio.gather(
            *(self._spawn(i) for i in range(count)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise SipError(f"SIP workers failed to start: {errors[0]}") from errors[0]
        log.info("SIP pool started: %d worker(s), %d call(s) each", count,
                 self.config.calls_per_worker)

    def _start_admission(self) -> None:
        if self.config.min_idle_cpu <= 0:
            return
        tightest = tightest_cgroup_quota()
        gauges = [CpuIdle()]
        if tightest is not None:
            gauges.append(CpuIdle(read=cgroup_times_reader(*tightest)))
        idle = LeastIdle(*gauges)
        try:
            idle.sample()
        except (OSError, ValueError) as e:
            log.warning("sip.min_idle_cpu is set but the CPU load cannot be read (%s); "
                        "calls are admitted without looking at it", e)
            return
        cores = float(os.cpu_count() or 1)
        if tightest is not None:
            cores = tightest[0]
            log.info("admission control: a CPU quota of %.2g core(s) (%s)", cores,
                     tightest[1] / "cpu.max")
        admission = Admission(self.config.min_idle_cpu, cores, idle)
        self._admission = admission
        self._background(self._sample_cpu(admission), name="cpu-sampler")

    async def _sample_cpu(self, admission: Admission) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            try:
                admission.idle.sample()
            except (OSError, ValueError) as e:
                log.warning("CPU load unreadable (%s); admission control is off", e)
                self._admission = None
                return
            admission.cost.observe(loop.time(), self._answered_by_pid())

    def _answered_by_pid(self) -> dict[int, int]:
        """Answered calls in progress, by the PID of the worker that holds them."""
        counts: dict[int, int] = {}
        for handle in self._calls.values():
            worker = self._workers.get(handle.worker)
            if handle.answered_at is not None and not handle.ended and worker and worker.pid:
                counts[worker.pid] = counts.get(worker.pid, 0) + 1
        return counts

    @property
    def call_cost_percent(self) -> float | None:
        """What admission control counts one call to cost, in % of a core (None when off)."""
        return self._admission.cost.pct if self._admission is not None else None

    @property
    def cpu_idle_percent(self) -> float | None:
        """The idle share admission control last saw (None when it is off)."""
        return self._admission.idle.percent if self._admission is not None else None

    def _overloaded(self) -> str | None:
        """Why the machine cannot take one more call now, or None."""
        if self._admission is None:
            return None
        now = asyncio.get_running_loop().time()
        unseen = sum(unseen_share(h.answered_at, now) for h in self._calls.values()
                     if not h.ended)
        return self._admission.refusal(unseen)

    async def stop(self) -> None:
        """End every call (BYE/CANCEL), unregister, stop every worker cleanly."""
        self._stopping = True
        for task in list(self._tasks):
            if task.get_name().startswith("restart-"):
                task.cancel()
        workers = list(self._workers.values())
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        for handle in list(self._calls.values()):
            handle._push(Failed("SIP pool stopped"))
        self._calls.clear()
        for task in list(self._tasks):
            task.cancel()
        self._workers.clear()
        await self._forks.close()
        self._started = False
        log.info("SIP pool stopped")

    async def _spawn(self, index: int) -> WorkerProcess:
        worker = WorkerProcess(
            self.config.for_worker(index),
            on_message=self._on_worker_message,
            on_dead=self._on_worker_dead,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            heartbeat_timeout_s=self.config.heartbeat_timeout_s,
            forks=self._forks,
        )
        self._workers[index] = worker
        await worker.start(self.config.start_timeout_s)
        return worker

    def _on_worker_dead(self, worker: WorkerProcess, reason: str) -> None:
        if self._workers.get(worker.index) is not worker:
            return
        lost = [self._calls.pop(cid) for cid in list(worker.calls) if cid in self._calls]
        worker.calls.clear()
        if self._stopping:
            for handle in lost:
                handle._push(Failed("SIP pool stopped"))
            return
        log.error("worker %d (pid %d) died: %s; %d call(s) lost", worker.index, worker.pid,
                  reason, len(lost))
        for handle in lost:
            log.info("call %s (sip %s): failed, worker %d died", handle.id, handle.sip_call_id,
                     worker.index)
            handle._push(Failed(f"SIP worker {worker.index} died: {reason}"))
        for company, status in list(self._links.items()):
            if status.worker == worker.index:
                self._set_link(LinkStatus(company=company, state="failed",
                                          reason="worker died; restarting", worker=worker.index))
        for key, ext in list(self._extensions.items()):
            # its subscriptions died with it; the replacement subscribes and reports anew
            if self.config.home_worker(key[0]) == worker.index and ext.state != "offline":
                self._set_extension(ExtensionStatus(company=key[0], extension=key[1],
                                                    state="offline", reason="worker died"))
        lived = time.monotonic() - worker.started_at
        quick = self._quick_deaths.get(worker.index, 0) + 1 if lived < STABLE_AFTER_S else 0
        self._quick_deaths[worker.index] = quick
        delay = 0.0 if quick <= 1 else min(2.0 ** (quick - 1), RESTART_BACKOFF_MAX_S)
        self._background(self._restart(worker, delay), name=f"restart-{worker.index}")

    async def _restart(self, old: WorkerProcess, delay: float) -> None:
        await old.wait_exit()
        if old.channel is not None:
            await old.channel.close()
        if delay:
            log.info("restarting worker %d in %.0f s", old.index, delay)
            await asyncio.sleep(delay)
        if self._stopping:
            return
        self._restarts[old.index] = self._restarts.get(old.index, 0) + 1
        try:
            await self._spawn(old.index)
        except Exception as e:
            # its death (if it got that far) schedules the next attempt, with back-off
            log.error("worker %d failed to restart: %s", old.index, e)

    def _background(self, coro: Any, name: str = "") -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool task %s failed", task.get_name(), exc_info=task.exception())

    # ------------------------------------------------------------ queries
    def link_states(self) -> dict[str, LinkStatus]:
        """State of each register-mode link, as its home worker last reported it."""
        return dict(self._links)

    def extension_states(self) -> dict[tuple[str, str], ExtensionStatus]:
        """Last reported state of each watched extension, by (company, extension)."""
        return dict(self._extensions)

    def workers(self) -> list[WorkerInfo]:
        out = []
        for index in sorted(self._workers):
            w = self._workers[index]
            transports = tuple((t.transport, t.host, t.port) for t in w.ready.transports) \
                if w.ready else ()
            out.append(WorkerInfo(index=index, pid=w.pid, alive=w.usable, calls=w.load,
                                  max_calls=w.max_calls, restarts=self._restarts.get(index, 0),
                                  transports=transports))
        return out

    @property
    def fork_server_pid(self) -> int | None:
        """The PID of the process the workers are forked from (bridge/sip/forkserver.py)."""
        return self._forks.pid

    def calls(self) -> list[CallHandle]:
        return list(self._calls.values())

    def call(self, call_id: str) -> CallHandle | None:
        return self._calls.get(call_id)

    def _link(self, company: str) -> LinkConfig:
        for link in self.config.links:
            if link.company == company:
                return link
        raise UnknownCompany(f"no PBX link for company {company!r}")

    def _company_calls(self, company: str) -> int:
        return sum(1 for h in self._calls.values() if h.company == company and not h.ended)

    # ------------------------------------------------------------ links at run time
    async def set_link(self, link: LinkConfig) -> None:
        """Add or replace a company's PBX link in every running worker (its home worker
        registers it); workers started later get it from the config."""
        self.config = self.config.with_link(link)
        home = self.config.home_worker(link.company)
        if link.mode == "register":
            self._set_link(LinkStatus(company=link.company, state="registering", worker=home))
        else:
            self._links.pop(link.company, None)
        await self._tell_workers(lambda w: lambda req: ipc.SetLink(
            req=req, link=link, registers=w.index == home))
        log.info("link %s: %s at run time (%s, home worker %d)", link.company,
                 "set", link.mode, home)

    async def watch_extensions(self, link: LinkConfig) -> None:
        """The extensions watched for ``link.company`` changed (same PBX link otherwise):
        its home worker re-subscribes without touching the account or registration."""
        self._link(link.company)
        self.config = self.config.with_link(link)
        home = self._workers.get(self.config.home_worker(link.company))
        for key in [k for k in self._extensions if k[0] == link.company
                    and k[1] not in link.extensions]:
            del self._extensions[key]
        if home is not None and home.usable:
            await home.request(lambda req: ipc.WatchExtensions(req=req, link=link))

    async def remove_link(self, company: str) -> None:
        """Remove a company's link from every running worker (unregistering it)."""
        self._link(company)
        self.config = self.config.without_link(company)
        self._links.pop(company, None)
        for key in [k for k in self._extensions if k[0] == company]:
            del self._extensions[key]
        await self._tell_workers(lambda _w: lambda req: ipc.DropLink(req=req, company=company))
        log.info("link %s: removed at run time", company)

    async def _tell_workers(self, build: Callable[[WorkerProcess], Callable[[int], Any]]) -> None:
        workers = [w for w in self._workers.values() if w.usable]
        results = await asyncio.gather(*(w.request(build(w)) for w in workers),
                                       return_exceptions=True)
        for worker, result in zip(workers, results, strict=True):
            if isinstance(result, BaseException):
                # The worker is out of step with the config: replace it (it restarts from it).
                log.error("worker %d could not apply a link change (%s); replacing it",
                          worker.index, result)
                worker.kill()

    # ------------------------------------------------------------ actions
    async def make_call(
        self, company: str, target: str, from_user: str, from_display: str = ""
    ) -> CallHandle:
        """INVITE ``target`` (extension or number) at the company's PBX.

        Raises UnknownCompany, CompanyBusy, CapacityExceeded (every worker full),
        WorkerUnavailable, InvalidTarget, PjsipFailure.
        """
        link = self._link(company)
        if not target.startswith(("sip:", "sips:")):
            check_user(target, "target")
        check_user(from_user, "from user")
        if link.max_calls is not None and self._company_calls(company) >= link.max_calls:
            raise CompanyBusy(f"{company} already has {link.max_calls} call(s)")
        overloaded = self._overloaded()
        if overloaded:
            self.overload_refusals["outbound"] += 1
            raise Overloaded(overloaded)
        candidates = [w for w in self._workers.values() if w.usable]
        if not candidates:
            raise WorkerUnavailable("no SIP worker is running")
        candidates = [w for w in candidates if w.load < w.max_calls]
        candidates.sort(key=lambda w: (w.load, w.index))
        if not candidates:
            raise CapacityExceeded("every SIP worker is at its call limit")
        last: SipError | None = None
        for worker in candidates:
            call_id = f"out-{self._tag}-{next(self._ids)}"
            handle = CallHandle(call_id, company, "outbound", worker)
            self._calls[call_id] = handle
            worker.calls.add(call_id)
            command = ipc.MakeCall(req=0, call=call_id, company=company, target=target,
                                   from_user=from_user, from_display=from_display)
            try:
                reply = await worker.request(partial(ipc.replace_req, command))
            except CapacityExceeded as e:
                self._drop(call_id, worker)
                last = e
                continue
            except BaseException:
                self._drop(call_id, worker)
                raise
            handle.sip_call_id = reply.value
            return handle
        assert last is not None
        raise last

    def _drop(self, call_id: str, worker: WorkerProcess) -> None:
        self._calls.pop(call_id, None)
        worker.calls.discard(call_id)

    async def send_message(
        self, company: str, target: str, text: str, from_user: str, from_display: str = ""
    ) -> MessageResult:
        """SIP MESSAGE (text/plain; charset=UTF-8) to an extension; the PBX's final answer."""
        self._link(company)
        check_user(target, "target")
        check_user(from_user, "from user")
        size = len(text.encode("utf-8"))
        if size > self.config.message_max_bytes:
            raise MessageTooLarge(
                f"message is {size} bytes; the limit is {self.config.message_max_bytes} bytes"
            )
        home = self._workers.get(self.config.home_worker(company))
        worker = home if home is not None and home.usable else next(
            (w for w in self._workers.values() if w.usable), None)
        if worker is None:
            raise WorkerUnavailable("no SIP worker is running")
        outcome = await worker.request(
            lambda req: ipc.SendMessage(req=req, company=company, target=target, text=text,
                                        from_user=from_user, from_display=from_display),
            timeout_s=MESSAGE_TIMEOUT_S,
        )
        return MessageResult(outcome.status, outcome.reason)

    # ------------------------------------------------------------ worker events
    def _on_worker_message(self, worker: WorkerProcess, msg: Any) -> None:
        if isinstance(msg, ipc.LogLine):
            handle = (self._calls.get(msg.call) or self._ended.get(msg.call)) if msg.call \
                else None
            call_id = (handle.correlation or msg.call) if handle is not None else msg.call
            logging.getLogger(msg.logger).log(msg.level, "[w%d] %s", worker.index, msg.message,
                                              extra={"call_id": call_id or None})
        elif isinstance(msg, ipc.LinkState):
            self._on_link_state(worker, msg)
        elif isinstance(msg, ipc.ExtensionState):
            self._on_extension_state(worker, msg)
        elif isinstance(msg, ipc.IncomingCall):
            self._on_incoming_call(worker, msg)
        elif isinstance(msg, ipc.IncomingMessage):
            self._on_incoming_message(worker, msg)
        elif isinstance(msg, ipc.CallEnded):
            handle = self._calls.pop(msg.call, None)
            worker.calls.discard(msg.call)
            if handle is not None:
                self._remember_ended(handle)
                handle._push(Ended(msg.status, msg.reason, msg.by))
        elif isinstance(msg, media_ipc.AudioCounts):
            self._on_audio_counts(msg)
        else:
            event = _call_event(msg)
            call = getattr(msg, "call", None)
            handle = self._calls.get(call) if isinstance(call, str) else None
            if event is not None and handle is not None:
                if isinstance(msg, ipc.CallTransferred) and msg.sip_call_id:
                    handle.sip_call_id = msg.sip_call_id
                handle._push(event)
            elif event is None:
                log.debug("worker %d: unhandled %s", worker.index, type(msg).__name__)

    def _remember_ended(self, handle: CallHandle) -> None:
        self._ended[handle.id] = handle
        asyncio.get_running_loop().call_later(ENDED_MEMORY_S, self._ended.pop, handle.id, None)

    def _on_audio_counts(self, msg: media_ipc.AudioCounts) -> None:
        handle = self._calls.get(msg.call) or self._ended.get(msg.call)
        handler = self.on_audio_stats
        if handle is None or handler is None:
            return
        try:
            handler(handle, AudioStats(
                to_matrix_frames=msg.to_matrix_frames, to_matrix_lost=msg.to_matrix_lost,
                to_sip_frames=msg.to_sip_frames, to_sip_lost=msg.to_sip_lost))
        except Exception:
            log.exception("audio stats handler failed for call %s", msg.call)

    def _on_link_state(self, worker: WorkerProcess, msg: ipc.LinkState) -> None:
        if self.config.home_worker(msg.company) != worker.index or not any(
                link.company == msg.company for link in self.config.links):
            return  # not its home, or a link removed at run time
        self._set_link(LinkStatus(company=msg.company, state=msg.state, status=msg.status,
                                  reason=msg.reason, expires_s=msg.expires_s,
                                  retry_in_s=msg.retry_in_s, worker=worker.index))

    def _on_extension_state(self, worker: WorkerProcess, msg: ipc.ExtensionState) -> None:
        if self.config.home_worker(msg.company) != worker.index:
            return  # a worker that is no longer the company's home (links moved)
        self._set_extension(ExtensionStatus(company=msg.company, extension=msg.extension,
                                            state=msg.state, reason=msg.reason))

    def _set_extension(self, status: ExtensionStatus) -> None:
        self._extensions[(status.company, status.extension)] = status
        handler = self.on_extension_state
        if handler is not None:
            self._run_handler(handler(status), f"state of {status.company}/{status.extension}")

    def _set_link(self, status: LinkStatus) -> None:
        self._links[status.company] = status
        handler = self.on_link_state
        if handler is not None:
            self._run_handler(handler(status), f"link state of {status.company}")

    def _on_incoming_call(self, worker: WorkerProcess, msg: ipc.IncomingCall) -> None:
        info = IncomingCallInfo(
            company=msg.company, caller_user=msg.caller_user, caller_display=msg.caller_display,
            caller_uri=msg.caller_uri, asserted_identity=msg.asserted_identity,
            target=msg.target, to_user=msg.to_user, source=msg.source,
            sip_call_id=msg.sip_call_id,
        )
        handle = CallHandle(msg.call, msg.company, "inbound", worker, info)
        try:
            link: LinkConfig | None = self._link(msg.company)
        except UnknownCompany:
            link = None
        busy = (link is not None and link.max_calls is not None
                and self._company_calls(msg.company) >= link.max_calls)
        overloaded = None if busy else self._overloaded()
        self._calls[msg.call] = handle
        worker.calls.add(msg.call)
        if busy:
            log.info("call %s: %s is at its limit of %s call(s): 486", msg.call, msg.company,
                     link.max_calls if link else "?")
            self._background(self._reject_quietly(handle, 486, "Busy Here"))
            return
        if overloaded:
            self.overload_refusals["inbound"] += 1
            log.warning("call %s from %s refused with 503: %s", msg.call, msg.company,
                        overloaded)
            self._background(self._reject_quietly(handle, 503, "Service Unavailable"))
            return
        handler = self.on_incoming_call
        if handler is None:
            self._background(self._reject_quietly(handle, 480, "Temporarily Unavailable"))
            return

        async def on_error() -> None:
            await self._reject_quietly(handle, 500, "Server Error")

        self._run_handler(handler(handle), f"incoming call {msg.call}", on_error=on_error)

    async def _reject_quietly(self, handle: CallHandle, status: int, reason: str) -> None:
        if handle.ended or handle.state == "answered":
            return
        with contextlib.suppress(SipError):
            await handle.reject(status, reason)

    def _on_incoming_message(self, worker: WorkerProcess, msg: ipc.IncomingMessage) -> None:
        """Hand a received MESSAGE to ``on_message``; when the worker holds the request
        (``key``), the handler's status is the PBX's answer (500 if the handler fails)."""
        message = IncomingMessage(
            company=msg.company, from_user=msg.from_user, from_display=msg.from_display,
            from_uri=msg.from_uri, to_user=msg.to_user, content_type=msg.content_type,
            text=msg.text, source=msg.source,
        )
        handler = self.on_message

        async def deliver() -> None:
            status = 480
            if handler is None:
                log.warning("message for %s from %s dropped: no handler", msg.company,
                            msg.from_uri)
            else:
                try:
                    result = handler(message)
                    if inspect.isawaitable(result):
                        result = await result
                    status = int(result) if result else 200
                except Exception:
                    log.exception("handler for the message from %s failed", msg.from_uri)
                    status = 500
            if msg.key:
                with contextlib.suppress(SipError):
                    await worker.request(lambda req: ipc.AnswerMessage(
                        req=req, key=msg.key, status=status))

        self._background(deliver(), name=f"message from {msg.from_uri}")

    def _run_handler(
        self,
        result: Awaitable[None] | None,
        what: str,
        on_error: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if not inspect.isawaitable(result):
            return

        async def guarded() -> None:
            try:
                await result
            except Exception:
                log.exception("handler for %s failed", what)
                if on_error is not None:
                    await on_error()

        self._background(guarded(), name=what)


def _call_event(msg: Any) -> CallEvent | None:
    if isinstance(msg, ipc.CallRinging):
        return Ringing(msg.status, msg.reason)
    if isinstance(msg, ipc.CallEarlyMedia):
        return EarlyMedia(msg.status)
    if isinstance(msg, ipc.CallAnswered):
        return Answered(msg.codec)
    if isinstance(msg, ipc.CallDtmf):
        return Dtmf(msg.digit, msg.method)
    if isinstance(msg, ipc.CallHeld):
        return Held(msg.by, msg.on)
    if isinstance(msg, ipc.CallTransferred):
        return Transferred(msg.to, msg.kind, msg.sip_call_id)
    if isinstance(msg, media_ipc.MediaState):
        return MediaChanged(msg.state, msg.detail)
    return None
