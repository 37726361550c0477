"""The pjsua2 owner thread: one Endpoint, its transports, accounts, calls and audio ports.

Only this thread calls pjsua2 (``threadCnt=0``, ``mainThreadOnly``, a ``libHandleEvents``
loop); pjmedia's clock thread runs the frame callbacks of :mod:`.audio`. Other threads hand
work over with :meth:`PjOwner.submit` (a thread-safe queue drained every loop turn) and get a
``concurrent.futures.Future`` back. Events leave through ``emit``, which must be thread-safe
and non-blocking (the worker passes ``loop.call_soon_threadsafe``-based delivery).

Start-up: ``libCreate`` → ``libInit`` (log writer, null sound device, no echo canceller, VAD
off, clock rate) → transports → source filter → ``libStart`` → codec priorities → audio port
pool → accounts (home links start registering).

Teardown follows the order that exited cleanly 20 of 20 times in the prototype (DESIGN §3a):
hang up every call and wait for DISCONNECTED; unregister (REGISTER expires 0) and wait;
``hangupAllCalls()`` and pump events ~300 ms; drop every Call; ``setNoDev()`` (stops the
clock); delete the ports; ``acc.shutdown()``; ``libDestroy()`` — all in this thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import heapq
import itertools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import pjsua2 as pj

from . import digest, ipc, pjlog, routing
from .audio import AudioPool
from .calls import CallTable, incoming_info, source_of
from .config import LinkConfig, WorkerConfig
from .errors import SipError, UnknownCompany
from .framecopy import FrameCopy
from .links import LinkAccount, Links
from .messages import Messenger
from .notify_observer import NotifyObserver
from .pjlib import pj_reason, pjsua_lib
from .presence import PresenceWatcher
from .sipmsg import Request, parse_request
from .sourcefilter import TAKE, Headers, SourceFilter, max_pkt_len_from_dump
from .transports import TransportSet, create_transports

log = logging.getLogger(__name__)

T = TypeVar("T")

_CODEC_IDS = {"PCMU": "PCMU/8000", "PCMA": "PCMA/8000", "G722": "G722/16000"}
TEARDOWN_CALLS_S = 3.0
TEARDOWN_UNREGISTER_S = 3.0
TEARDOWN_PUMP_S = 0.3
#: seconds the controller has to deliver a MESSAGE taken over before the PBX gets 480
MESSAGE_ANSWER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Started:
    transports: tuple[ipc.BoundTransport, ...]
    source_filter: bool


def _detached(e: BaseException) -> BaseException:
    """The exception to hand to another thread, without its traceback: frames of this
    thread may hold pjsua2 objects (a Call whose INVITE failed), which must be released
    here, never by the asyncio thread (an unregistered thread touching pjsua2 aborts)."""
    out = e if isinstance(e, SipError) else SipError(f"{type(e).__name__}: {pj_reason(e)}")
    out.__traceback__ = None
    out.__context__ = None
    out.__cause__ = None
    return out


class _CaptureWriter(pjlog.PjLogWriter):
    """Log writer that can also keep lines (to read ``pjsip_dump_config``)."""

    def __init__(self) -> None:
        super().__init__()
        self.captured: list[str] | None = None

    def write(self, entry: pj.LogEntry) -> None:
        lines = self.captured
        if lines is not None:
            try:
                lines.append(str(entry.msg))
            except Exception:  # noqa: S110
                pass
            return
        super().write(entry)


class _Endpoint(pj.Endpoint):
    """The Endpoint, with the one callback we need; it refers to the owner weakly (no
    reference cycle through a pjsua2 object)."""

    def __init__(self, on_transport_lost: Callable[[str], None]) -> None:
        super().__init__()
        self._on_transport_lost = weakref.WeakMethod(on_transport_lost)

    def onTransportState(self, prm: pj.OnTransportStateParam) -> None:
        try:
            if prm.state == pj.PJSIP_TP_STATE_DISCONNECTED:
                kind = str(prm.type).lower()
                callback = self._on_transport_lost()
                if callback is not None and kind in ("tcp", "tls"):
                    callback(kind)
        except Exception:
            log.exception("transport state callback failed")


class PjOwner:
    """Runs the Endpoint in its own thread; everything pjsua2 happens there."""

    def __init__(
        self,
        cfg: WorkerConfig,
        loop: asyncio.AbstractEventLoop,
        emit: Callable[[Any], None],
        copy: FrameCopy,
    ) -> None:
        self.cfg = cfg
        self._emit = emit
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._queue = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count(1)
        self._cancelled: set[int] = set()
        self._stop = threading.Event()
        self._started: concurrent.futures.Future[Started] = concurrent.futures.Future()
        self.finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._tick = time.monotonic()
        #: (window start, refusals logged, refusals not logged) for _log_refusal
        self._refusal_window: tuple[float, int, int] = (0.0, 0, 0)
        self._thread = threading.Thread(target=self._main, name="pjsua-owner", daemon=True)
        self.audio = AudioPool(cfg.max_calls, cfg.clock_rate, copy, loop)
        self.calls = CallTable(self.audio, emit, cfg.index)
        self.links = Links(cfg, emit, self.schedule, self.cancel)
        self.messages = Messenger(cfg.message_max_bytes, emit)
        self.presence = PresenceWatcher(self.links, emit, self.schedule, self.cancel)
        self._notify_observer: NotifyObserver | None = None
        #: PJSIP_MAX_PKT_LEN as pjsip_dump_config tells it (None: unknown)
        self.max_pkt_len: int | None = None
        #: the links as they stand (the config's, then as changed at run time)
        self.link_configs = {link.company: link for link in cfg.links}
        self._routes = routing.routes_of(cfg.links)
        self._nonces = digest.NonceKey(cfg.nonce_secret or None)
        self._ep: pj.Endpoint | None = None
        self._writer: _CaptureWriter | None = None
        self._transports: TransportSet | None = None
        self._filter: SourceFilter | None = None
        self._taking: str | None = None

    # ------------------------------------------------------------ any thread
    def start(self) -> concurrent.futures.Future[Started]:
        self._thread.start()
        return self._started

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self.finished.done() or self._stop.is_set():
            fut.set_exception(RuntimeError("pjsua2 owner thread is stopping"))
            return fut
        self._queue.put((fn, fut))
        return fut

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    def loop_age_ms(self) -> int:
        if self.finished.done():
            return 0
        return int((time.monotonic() - self._tick) * 1000)

    def stop(self) -> None:
        """Ask the thread to tear down and exit; wait on :attr:`finished`."""
        self._stop.set()

    # ------------------------------------------------------------ owner thread
    def schedule(self, delay_s: float, fn: Callable[[], None]) -> int:
        tid = next(self._timer_ids)
        heapq.heappush(self._timers, (time.monotonic() + delay_s, tid, fn))
        return tid

    def cancel(self, timer_id: int) -> None:
        self._cancelled.add(timer_id)

    def _main(self) -> None:
        try:
            started = self._init()
        except BaseException as e:
            log.exception("pjsua2 start failed")
            self._started.set_exception(e)
            try:
                self._teardown()
            finally:
                self.finished.set_result(None)
            return
        self._started.set_result(started)
        try:
            self._loop()
        except BaseException:
            log.exception("pjsua2 owner loop crashed")
        try:
            self._teardown()
        except BaseException:
            log.exception("pjsua2 teardown failed")
        finally:
            self.finished.set_result(None)

    def _init(self) -> Started:
        cfg = self.cfg
        pjlog.silence_console()
        ep = _Endpoint(self._transport_lost)
        self._ep = ep
        ep.libCreate()
        epc = pj.EpConfig()
        ua = epc.uaConfig
        ua.threadCnt = 0
        ua.mainThreadOnly = True
        ua.maxCalls = cfg.max_calls
        ua.userAgent = cfg.user_agent
        self._writer = _CaptureWriter()
        pjlog.configure(epc, self._writer, cfg.pj_log_level)
        med = epc.medConfig
        med.clockRate = cfg.clock_rate
        med.sndClockRate = cfg.clock_rate
        med.ecTailLen = 0
        med.noVad = True
        med.audioFramePtime = 20
        med.ptime = 20
        ep.libInit(epc)
        ep.audDevManager().setNullDev()
        self._transports = create_transports(ep, cfg)
        self._install_filter(ep)
        ep.libStart()
        self._set_codecs(ep)
        self.audio.create_ports()
        self.links.create(self._transports, self)
        self._start_presence()
        return Started(tuple(self._transports.bound), bool(self._filter and self._filter.installed))

    def _install_filter(self, ep: pj.Endpoint) -> None:
        if not self.cfg.source_filter:
            log.warning("source filter disabled by the config")
            return
        writer = self._writer
        assert writer is not None
        lines: list[str] = []
        writer.captured = lines
        lib = pjsua_lib()
        lib.pj_log_get_level.restype = ctypes.c_int
        lib.pj_log_set_level.argtypes = [ctypes.c_int]
        level = lib.pj_log_get_level()
        try:
            lib.pj_log_set_level(max(level, 3))  # the dump is logged at level 3
            lib.pjsip_dump_config()
        except Exception:
            log.exception("pjsip_dump_config failed")
        finally:
            lib.pj_log_set_level(level)
            writer.captured = None
        max_pkt = max_pkt_len_from_dump(lines)
        self.max_pkt_len = max_pkt
        if max_pkt is None:
            log.warning("PJSIP_MAX_PKT_LEN unknown: no source filter (MESSAGE from a foreign "
                        "source gets 200 and is dropped)")
            return
        flt = SourceFilter(self._decide, max_pkt, on_taken=self._message_taken)
        if flt.install():
            self._filter = flt

    # ------------------------------------------------------------ MESSAGE answered late
    def _message_taken(self, key: int, text: str, source: str) -> None:
        """The source filter took an admitted MESSAGE over: the controller delivers it and
        its verdict is the answer (480 if none comes in time)."""
        company, self._taking = self._taking, None
        if company is None:
            self.answer_message(key, 500)
            return
        self.messages.on_taken(key, company, text, source)
        self.schedule(MESSAGE_ANSWER_TIMEOUT_S, partial(self._message_timeout, key))

    def _message_timeout(self, key: int) -> None:
        if self._filter is not None and self._filter.taken is not None and \
                key in self._filter.taken.pending():
            log.warning("message %d: no answer from the controller in %.0f s: 480", key,
                        MESSAGE_ANSWER_TIMEOUT_S)
            self.answer_message(key, 480)

    def answer_message(self, key: int, status: int) -> None:
        if self._filter is None or not self._filter.answer(key, status):
            log.info("message %d: could not answer %d (its transaction is gone)", key, status)

    def _start_presence(self) -> None:
        """Extension subscriptions of the companies homed here (see :mod:`.presence`)."""
        if self.max_pkt_len is not None:
            observer = NotifyObserver(self.presence.notify_accepted, self.max_pkt_len)
            if observer.install():
                self._notify_observer = observer
                self.presence.observed = True
        for link in self.cfg.links:
            if link.company in self.cfg.watches:
                self.presence.watch(link)

    def _set_codecs(self, ep: pj.Endpoint) -> None:
        wanted = [_CODEC_IDS[c] for c in self.cfg.codecs]
        for info in ep.codecEnum2():
            cid = str(info.codecId)
            base = "/".join(cid.split("/")[:2])
            prio = 255 - wanted.index(base) if base in wanted else 0
            ep.codecSetPriority(cid, prio)

    def _loop(self) -> None:
        ep = self._ep
        assert ep is not None
        poll = max(1, int(self.cfg.poll_ms))
        while not self._stop.is_set():
            self._drain()
            self._run_timers()
            self._tick = time.monotonic()
            ep.libHandleEvents(poll)

    def _drain(self) -> None:
        while True:
            try:
                fn, fut = self._queue.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(_detached(e))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _when, tid, fn = heapq.heappop(self._timers)
            if tid in self._cancelled:
                self._cancelled.discard(tid)
                continue
            try:
                fn()
            except Exception:
                log.exception("timer callback failed")

    def _pump(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        ep = self._ep
        if ep is None:
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until is not None and until():
                return
            self._drain()
            self._run_timers()
            self._tick = time.monotonic()
            ep.libHandleEvents(10)

    def _teardown(self) -> None:
        ep = self._ep
        # refuse further work
        self._stop.set()
        while True:
            try:
                _fn, fut = self._queue.get_nowait()
            except queue.Empty:
                break
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("pjsua2 owner thread is stopping"))
        self.presence.shutdown()
        if ep is not None and self._started.done() and self._started.exception() is None:
            if self.calls.hangup_all():
                self._pump(TEARDOWN_CALLS_S, lambda: len(self.calls) == 0)
            self.links.unregister_all()
            self._pump(TEARDOWN_UNREGISTER_S, lambda: self.links.pending_unregistration() == 0)
            try:
                ep.hangupAllCalls()
            except Exception:
                log.exception("hangupAllCalls failed")
            self._pump(TEARDOWN_PUMP_S)
        self.calls.clear()
        self.messages.clear()
        if ep is not None:
            try:
                ep.audDevManager().setNoDev()
            except Exception:
                log.exception("setNoDev failed")
        self.audio.destroy()
        self.links.shutdown()
        if self._filter is not None:
            self._filter.uninstall()
        if self._notify_observer is not None:
            self._notify_observer.uninstall()
        if self._transports is not None:
            self._transports.drop_endpoint()
        if ep is not None:
            try:
                ep.libDestroy()
            except Exception:
                log.exception("libDestroy failed")
            self._ep = None
            del ep
        self._writer = None
        while True:
            try:
                _fn, fut = self._queue.get_nowait()
            except queue.Empty:
                break
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("pjsua2 owner thread has stopped"))
        log.info("pjsua2 stopped")

    def _transport_lost(self, kind: str) -> None:
        self.links.transport_lost(kind)

    # ------------------------------------------------------------ routing (owner thread)
    REFUSAL_LOG_PER_MINUTE = 20
    #: methods a company's ``inbound_auth`` applies to (OPTIONS stays open: keepalives)
    AUTH_METHODS = ("INVITE", "MESSAGE")

    def _log_refusal(self, method: str, source_ip: str, why: str = "matches no link") -> None:
        """One WARNING per refused request, at most 20 a minute: a scanner must not be able
        to flood the logs. The rest are counted and summed up once the minute is over."""
        now = time.monotonic()
        start, logged, dropped = self._refusal_window
        if now - start >= 60.0:
            if dropped:
                log.warning("%d more refused requests (403) in the last minute were not logged",
                            dropped)
            start, logged, dropped = now, 0, 0
        if logged < self.REFUSAL_LOG_PER_MINUTE:
            log.warning("%s from %s %s: 403", method, source_ip, why)
            logged += 1
        else:
            dropped += 1
        self._refusal_window = (start, logged, dropped)

    def _authenticate(self, company: str, req: Request, source_ip: str) -> digest.Verdict:
        """The company's ``inbound_auth`` verdict on an admitted request (status 0: go on).
        Never logs a credential; 401s are part of every authenticated call (DEBUG)."""
        link = self.link_configs.get(company)
        if link is None or link.inbound_auth is None or req.method not in self.AUTH_METHODS:
            return digest.Verdict(0)
        auth = link.inbound_auth
        verdict = digest.authenticate(
            username=auth.username, realm=link.inbound_realm, password=auth.password,
            key=self._nonces, method=req.method, authorization=req.headers.get("authorization", []))
        if verdict.status == 401:
            log.debug("%s from %s for %s: %s: 401", req.method, source_ip, company, verdict.why)
        elif verdict.status:
            self._log_refusal(req.method, source_ip, f"for {company}: {verdict.why}")
        return verdict

    @staticmethod
    def _answer_of(verdict: digest.Verdict) -> tuple[int, Headers]:
        headers = ((digest.HEADER, verdict.challenge),) if verdict.challenge else ()
        return verdict.status, headers

    def _decide(self, text: str, source_ip: str) -> tuple[int, Headers]:
        """Source filter verdict: (0, ()) to let pjsua handle it, 401 with a challenge, 403
        or 503."""
        req = parse_request(text)
        if req is None or req.method in ("ACK", "CANCEL") or req.to_tag:
            return 0, ()
        company = routing.resolve(self._routes, req, source_ip)
        if company is None:
            self._log_refusal(req.method, source_ip)
            return 403, ()
        verdict = self._authenticate(company, req, source_ip)
        if verdict.status:
            return self._answer_of(verdict)
        if req.method == "MESSAGE" and self._filter is not None and \
                self._filter.taken is not None:
            self._taking = company  # for _message_taken, right after this
            return TAKE, ()
        if req.method == "INVITE" and self.calls.full:
            log.warning("INVITE from %s while this worker is full (%d call slots, or pjsua "
                        "still holding ended calls): 503", source_ip, self.cfg.max_calls)
            return 503, ()
        return 0, ()

    def _company_of(self, rdata: pj.SipRxData) -> tuple[str | None, digest.Verdict, str, str]:
        """(company or None, its inbound_auth verdict, source ``ip:port``, message text)."""
        text = str(rdata.wholeMsg)
        source, ip = source_of(rdata)
        req = parse_request(text)
        company = routing.resolve(self._routes, req, ip) if req else None
        if req is None or company is None:
            return company, digest.Verdict(0), source, text
        return company, self._authenticate(company, req, ip), source, text

    # ------------------------------------------------------------ AccountSink (owner thread)
    def incoming_call(self, acc: LinkAccount, prm: pj.OnIncomingCallParam) -> None:
        """Decided again here (the source filter may be missing): 403 for no link, 401 with
        the challenge or 403 for missing or wrong credentials, through the call's answer."""
        company, verdict, source, text = self._company_of(prm.rdata)
        info = incoming_info(text, source)
        target = self.links.get(company) if company else None
        refusal = self._answer_of(verdict) if verdict.status else None
        self.calls.incoming(target or acc, prm, company, info, refusal)

    def incoming_message(self, acc: LinkAccount, prm: pj.OnInstantMessageParam) -> None:
        """pjsua has answered 200 already: without the source filter a MESSAGE cannot be
        challenged, so one without valid credentials is dropped here."""
        company, verdict, source, _text = self._company_of(prm.rdata)
        if company is None:
            log.warning("MESSAGE from %s matches no link: dropped", source)
            return
        if verdict.status:
            log.warning("MESSAGE from %s for %s without valid credentials (%s): dropped",
                        source, company, verdict.why)
            return
        self.messages.on_incoming(company, prm, source)

    def message_status(self, acc: LinkAccount, prm: pj.OnInstantMessageStatusParam) -> None:
        self.messages.on_status(prm)

    def reg_started(self, acc: LinkAccount, renew: bool) -> None:
        self.links.reg_started(acc, renew)

    def reg_state(self, acc: LinkAccount, code: int, reason: str, expires: int) -> None:
        self.links.reg_state(acc, code, reason, expires)

    # ------------------------------------------------------------ commands (owner thread)
    def set_link(self, link: LinkConfig, registers: bool) -> None:
        """Add or replace a company's link at run time (a replaced one re-registers)."""
        assert self._transports is not None
        self.presence.unwatch(link.company)
        if link.company in self.link_configs:
            self.links.remove(link.company)
        self.link_configs[link.company] = link
        self._routes = routing.routes_of(self.link_configs.values())
        self.links.add(link, registers and link.mode == "register", self._transports, self)
        if registers:  # the home worker
            self.presence.watch(link)

    def drop_link(self, company: str) -> None:
        self.presence.unwatch(company)
        self.link_configs.pop(company, None)
        self._routes = routing.routes_of(self.link_configs.values())
        self.links.remove(company)

    def account(self, company: str) -> LinkAccount:
        acc = self.links.get(company)
        if acc is None:
            raise UnknownCompany(f"no PBX link for company {company!r}")
        return acc
