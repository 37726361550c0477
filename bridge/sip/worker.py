"""The SIP/media worker process: :func:`serve` in a child of the pool's fork server
(:mod:`.forkserver`).

Its IPC socket is this process's end of a socketpair made by the pool; stdout is never used
(the fork server points it at stderr anyway). The asyncio loop (main thread) speaks IPC and
owns the per-call :class:`~.audio.CallAudio` objects; :class:`~.endpoint.PjOwner` runs
pjsua2 in its own thread.
Log records of every thread (pjsua2's included) travel to the controller as ``LogLine``.

The worker ends cleanly on ``Shutdown``, on SIGTERM, and when the controller goes away
(end of stream on the socket): every call is ended, home links unregister, pjsua2 is
destroyed in its own thread, then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from . import framecopy, ipc
from .audio import AudioClosed, CallAudio
from .endpoint import PjOwner
from .errors import NoSuchCall, SipError
from .media_bridge import MediaBridge
from .media_ipc import MEDIA_COMMANDS
from .pjlib import pj_reason

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.001
STOP_TIMEOUT_S = 15.0
START_TIMEOUT_S = 15.0


def _call_of(record: logging.LogRecord) -> str:
    """The call a worker log line is about: ``extra={"call": id}``, or by our convention a
    message that starts with ``"call %s"``."""
    call = getattr(record, "call", None)
    if isinstance(call, str):
        return call
    if isinstance(record.msg, str) and record.msg.startswith("call %s") and record.args \
            and isinstance(record.args, tuple) and isinstance(record.args[0], str):
        return record.args[0]
    return ""


class IpcLogHandler(logging.Handler):
    """Sends log records to the controller; safe from any thread, never blocks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Any) -> None:
        super().__init__()
        self._loop = loop
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            msg = ipc.LogLine(level=record.levelno, logger=record.name, message=text,
                              call=_call_of(record))
            self._loop.call_soon_threadsafe(self._send, msg)
        except Exception:  # noqa: S110 - logging must never break the caller (or pjsua2)
            pass


class Worker:
    def __init__(self, channel: ipc.Channel) -> None:
        self.channel = channel
        self.owner: PjOwner | None = None
        self._audio: dict[str, CallAudio] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Future[None] | None = None
        self._stop_req: int | None = None
        self.media: MediaBridge | None = None

    # ------------------------------------------------------------ plumbing
    def _send(self, msg: Any) -> None:
        if not self.channel.closed:
            try:
                self.channel.send(msg)
            except (ipc.ChannelClosed, RuntimeError):
                pass

    def _on_event(self, msg: Any) -> None:
        """Events from the owner thread, in the loop."""
        if isinstance(msg, ipc.CallEnded):
            audio = self._audio.pop(msg.call, None)
            if audio is not None:
                audio.close()
            if self.media is not None:
                self._spawn(self.media.close(msg.call))
        elif isinstance(msg, ipc.CallDtmf) and self.media is not None:
            self.media.dtmf_from_sip(msg.call, msg.digit)
        self._send(msg)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def audio_for(self, call_id: str) -> CallAudio:
        """The call's audio interface (the WebRTC leg will pump through it)."""
        owner = self.owner
        slot = owner.calls.slots.get(call_id) if owner else None
        if owner is None or slot is None:
            raise NoSuchCall(f"no call {call_id} on this worker")
        audio = self._audio.get(call_id)
        if audio is None or audio.closed:
            audio = CallAudio(call_id, owner.audio.buffers[slot], owner.cfg.clock_rate)
            self._audio[call_id] = audio
        return audio

    # ------------------------------------------------------------ life
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            first = await self.channel.recv()
        except ipc.ChannelClosed:  # the pool stopped while this worker was being started
            log.info("controller went away before configuring this worker; stopping")
            return 0
        if not isinstance(first, ipc.Configure):
            self._send(ipc.Fatal(error=f"expected Configure, got {type(first).__name__}"))
            return 2
        cfg = first.config
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(IpcLogHandler(loop, self._send))
        root.setLevel(cfg.log_level.upper())
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        copy = framecopy.select()

        def emit(msg: Any) -> None:
            loop.call_soon_threadsafe(self._on_event, msg)

        self.owner = PjOwner(cfg, loop, emit, copy)
        self.owner.calls.schedule = self.owner.schedule
        try:
            started = await asyncio.wait_for(
                asyncio.wrap_future(self.owner.start()), START_TIMEOUT_S
            )
        except Exception as e:
            self._send(ipc.Fatal(error=f"pjsua2 did not start: {pj_reason(e)}"))
            await self._finish_owner()
            await self.channel.drain()
            return 2
        owner = self.owner

        def sip_dtmf(call_id: str, digit: str) -> Any:
            return owner.run(lambda: owner.calls.send_dtmf(call_id, digit, "auto"))

        def sip_hold(call_id: str, held: bool) -> Any:
            return owner.run(lambda: owner.calls.set_hold(call_id, held))

        self.media = MediaBridge(
            host_addresses=cfg.media_addresses, codecs=cfg.codecs, clock_rate=cfg.clock_rate,
            audio_for=self.audio_for, send_sip_dtmf=sip_dtmf, set_sip_hold=sip_hold,
            emit=self._send,
        )
        if not started.source_filter:
            log.warning("source filter not installed: foreign MESSAGEs get 200 and are dropped")
        self._send(ipc.Ready(index=cfg.index, pid=os.getpid(), max_calls=cfg.max_calls,
                             transports=started.transports, frame_copy=copy.name))
        for sig in (signal.SIGTERM,):
            loop.add_signal_handler(sig, self._request_stop)
        self._stopping = loop.create_future()
        reader = loop.create_task(self._read_loop())
        await self._stopping
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await self._finish_owner()
        if self._stop_req is not None:
            self._send(ipc.Reply(req=self._stop_req))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.channel.drain(), 2.0)
        await self.channel.close()
        return 0

    def _request_stop(self) -> None:
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)

    async def _finish_owner(self) -> None:
        if self.media is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.media.close_all(), 5.0)
        owner = self.owner
        if owner is None:
            return
        owner.stop()
        try:
            await asyncio.wait_for(asyncio.wrap_future(owner.finished), STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("pjsua2 did not stop within %.0f s; exiting hard", STOP_TIMEOUT_S)
            await asyncio.sleep(0.2)
            os._exit(3)
        for audio in self._audio.values():
            audio.close()
        self._audio.clear()

    async def _read_loop(self) -> None:
        while True:
            try:
                msg = await self.channel.recv()
            except ipc.ChannelClosed:
                log.info("controller went away; stopping")
                self._request_stop()
                return
            if isinstance(msg, ipc.Ping):
                owner = self.owner
                self._send(ipc.Pong(seq=msg.seq, pj_loop_age_ms=owner.loop_age_ms() if owner else 0,
                                    calls=len(owner.calls) if owner else 0))
            elif isinstance(msg, ipc.Shutdown):
                self._stop_req = msg.req
                self._request_stop()
                return
            elif isinstance(msg, ipc.ProbeAudio):
                self._spawn(self._probe(msg))
            elif isinstance(msg, MEDIA_COMMANDS):
                self._spawn(self._media_command(msg))
            else:
                await self._command(msg)

    # ------------------------------------------------------------ commands
    async def _command(self, msg: Any) -> None:
        req = getattr(msg, "req", None)
        if req is None:
            log.warning("ignoring IPC message %s", type(msg).__name__)
            return
        try:
            value = await self._execute(msg)
        except SipError as e:
            self._send(ipc.Reply(req=req, ok=False, code=e.code, error=str(e)))
        except Exception as e:
            log.exception("%s failed", type(msg).__name__)
            self._send(ipc.Reply(req=req, ok=False, code="sip_error", error=str(e)))
        else:
            if value is not None:
                self._send(ipc.Reply(req=req, value=value))

    async def _execute(self, msg: Any) -> str | None:
        """The reply's value ("" for a plain OK), or None when the answer comes later."""
        owner = self.owner
        assert owner is not None
        calls = owner.calls
        if isinstance(msg, ipc.MakeCall):
            return await owner.run(lambda: calls.make_call(msg, owner.account(msg.company)))
        if isinstance(msg, ipc.RingCall):
            await owner.run(lambda: calls.ring(msg.call))
        elif isinstance(msg, ipc.AnswerCall):
            await owner.run(lambda: calls.answer(msg.call))
        elif isinstance(msg, ipc.RejectCall):
            await owner.run(lambda: calls.reject(msg.call, msg.status, msg.reason))
        elif isinstance(msg, ipc.HangupCall):
            await owner.run(lambda: calls.hangup(msg.call))
        elif isinstance(msg, ipc.HoldCall):
            await owner.run(lambda: calls.set_hold(msg.call, msg.on))
        elif isinstance(msg, ipc.SendDtmf):
            return await owner.run(lambda: calls.send_dtmf(msg.call, msg.digits, msg.method))
        elif isinstance(msg, ipc.SendMessage):
            await owner.run(lambda: owner.messages.send(msg, owner.account(msg.company)))
            return None
        elif isinstance(msg, ipc.PlayTone):
            self._play_tone(msg)
        elif isinstance(msg, ipc.SetLink):
            await owner.run(lambda: owner.set_link(msg.link, msg.registers))
        elif isinstance(msg, ipc.DropLink):
            await owner.run(lambda: owner.drop_link(msg.company))
        elif isinstance(msg, ipc.AnswerMessage):
            await owner.run(lambda: owner.answer_message(msg.key, msg.status))
        elif isinstance(msg, ipc.WatchExtensions):
            await owner.run(lambda: owner.presence.watch(msg.link))
        else:
            raise SipError(f"unknown command {type(msg).__name__}")
        return ""

    async def _media_command(self, msg: Any) -> None:
        """WebRTC leg commands run concurrently (ICE gathering must not hold up others)."""
        try:
            assert self.media is not None
            value = await self.media.handle(msg)
        except SipError as e:
            self._send(ipc.Reply(req=msg.req, ok=False, code=e.code, error=str(e)))
        except Exception as e:
            log.exception("%s failed", type(msg).__name__)
            self._send(ipc.Reply(req=msg.req, ok=False, code="media_error", error=str(e)))
        else:
            self._send(ipc.Reply(req=msg.req, value=value))

    def _play_tone(self, msg: ipc.PlayTone) -> None:
        audio = self.audio_for(msg.call)
        if msg.freq_hz <= 0:
            audio.play(None)
            return
        from bridge.media.tone import sine_frames

        # one second of frames: a whole number of periods for integer frequencies,
        # so looping it has no phase jump
        frames = tuple(sine_frames(msg.freq_hz, audio.rate, 20, msg.level_dbfs, count=50))
        audio.play(frames)
        log.info("call %s: playing %.0f Hz at %.1f dBFS", msg.call, msg.freq_hz, msg.level_dbfs)

    async def _probe(self, msg: ipc.ProbeAudio) -> None:
        try:
            audio = self.audio_for(msg.call)
            pcm = await asyncio.wait_for(audio.capture(msg.seconds), msg.seconds + 5.0)
            from bridge.media.tone import analyse

            report = analyse(pcm, audio.rate)
            self._send(ipc.AudioReport(req=msg.req, freq_hz=float(report.freq_hz),
                                       level_dbfs=float(report.level_dbfs),
                                       frames=len(pcm) // audio.frame_bytes))
        except SipError as e:
            self._send(ipc.Reply(req=msg.req, ok=False, code=e.code, error=str(e)))
        except (AudioClosed, TimeoutError):
            self._send(ipc.Reply(req=msg.req, ok=False, code="no_such_call",
                                 error=f"call {msg.call} ended during the audio probe"))
        except Exception as e:
            log.exception("audio probe failed")
            self._send(ipc.Reply(req=msg.req, ok=False, code="sip_error", error=str(e)))


async def _amain(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    channel = await ipc.Channel.from_socket(sock)
    return await Worker(channel).run()


def serve(fd: int) -> int:
    """Run the worker on the IPC socket ``fd`` until it stops; its exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller decides when we stop
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="worker %(process)d %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_amain(fd))
