"""A call as the controller holds it: identity, an ordered event stream, and actions.

One consumer reads a handle's events (``async for ev in handle.events()`` or
``next_event``/``wait_for``); the stream ends after its terminal event (:class:`Ended` or
:class:`Failed`). Actions go to the worker that has the call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal, TypeVar

from . import ipc, media_ipc
from .errors import CallStateError, NoSuchCall, WorkerDied
from .events import (
    TERMINAL,
    Answered,
    AudioReport,
    CallEvent,
    EarlyMedia,
    Ended,
    Failed,
    IncomingCallInfo,
    Ringing,
)
from .ipc import DtmfMethod
from .workerproc import WorkerProcess

E = TypeVar("E")

State = Literal["calling", "incoming", "ringing", "early", "answered", "ended", "failed"]


class CallEndedError(CallStateError):
    """The call ended before the awaited event."""


class CallHandle:
    def __init__(
        self,
        call_id: str,
        company: str,
        direction: Literal["outbound", "inbound"],
        worker: WorkerProcess,
        info: IncomingCallInfo | None = None,
    ) -> None:
        self.id = call_id
        self.company = company
        self.direction = direction
        self.info = info
        self.sip_call_id = info.sip_call_id if info else ""
        #: the ID the controller's log lines use for this call (set by the call manager);
        #: the worker's lines about the call are logged with it too.
        self.correlation = ""
        self._worker = worker
        self.state: State = "incoming" if direction == "inbound" else "calling"
        #: loop time of the Answered event (admission control counts a call as starting
        #: until its media shows in the CPU average).
        self.answered_at: float | None = None
        self.end: Ended | Failed | None = None
        self._queue: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._finished = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return (f"CallHandle({self.id!r}, {self.company!r}, {self.direction}, "
                f"worker={self.worker}, state={self.state})")

    @property
    def worker(self) -> int:
        return self._worker.index

    @property
    def ended(self) -> bool:
        return self.end is not None

    # ------------------------------------------------------------ events
    def _push(self, event: CallEvent) -> None:
        """Pool internal: deliver one event (nothing after the terminal one)."""
        if self.end is not None:
            return
        if isinstance(event, Ended):
            self.state = "ended"
        elif isinstance(event, Failed):
            self.state = "failed"
        elif isinstance(event, Ringing) and self.state == "calling":
            self.state = "ringing"
        elif isinstance(event, EarlyMedia) and self.state in ("calling", "ringing"):
            self.state = "early"
        elif isinstance(event, Answered):
            self.state = "answered"
            self.answered_at = asyncio.get_running_loop().time()
        if isinstance(event, TERMINAL):
            self.end = event
            if not self._finished.done():
                self._finished.set_result(None)
        self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[CallEvent]:
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, TERMINAL):
                return

    async def next_event(self, timeout_s: float | None = None) -> CallEvent:
        return await asyncio.wait_for(self._queue.get(), timeout_s)

    async def wait_for(self, kind: type[E], timeout_s: float | None = None) -> E:
        """Skip events until one of ``kind``; CallEndedError if the call ends first."""

        async def scan() -> E:
            while True:
                event = await self._queue.get()
                if isinstance(event, kind):
                    return event
                if isinstance(event, TERMINAL):
                    raise CallEndedError(f"call {self.id} ended before {kind.__name__}: {event}")

        return await asyncio.wait_for(scan(), timeout_s)

    async def wait_ended(self, timeout_s: float | None = None) -> Ended | Failed:
        await asyncio.wait_for(asyncio.shield(self._finished), timeout_s)
        assert self.end is not None
        return self.end

    # ------------------------------------------------------------ actions
    async def _do(self, build: type, **fields: object) -> ipc.Reply:
        if self.end is not None:
            raise NoSuchCall(f"call {self.id} has ended")
        try:
            return await self._worker.request(lambda req: build(req=req, call=self.id, **fields))
        except WorkerDied:
            raise NoSuchCall(f"call {self.id} was lost with its worker") from None

    async def hangup(self) -> None:
        """BYE, CANCEL or 603, whatever fits the state; no-op once ended."""
        if self.end is not None:
            return
        try:
            await self._do(ipc.HangupCall)
        except NoSuchCall:
            pass

    async def ringing(self) -> None:
        await self._do(ipc.RingCall)

    async def answer(self) -> None:
        await self._do(ipc.AnswerCall)

    async def reject(self, status: int = 486, reason: str = "") -> None:
        await self._do(ipc.RejectCall, status=status, reason=reason)

    async def send_dtmf(self, digits: str, method: DtmfMethod = "auto") -> str:
        """Send digits; returns the method used (``rfc4733`` or ``info``)."""
        reply = await self._do(ipc.SendDtmf, digits=digits, method=method)
        return reply.value

    async def hold(self, on: bool = True) -> None:
        """Put the SIP call on hold (re-INVITE with a=sendonly) or resume it (a=sendrecv).

        Returns once the re-INVITE is sent; a :class:`Held` event (``by="local"``) follows
        when it took effect. CallStateError before the call is answered; a hold asked for
        while another re-INVITE is in progress is sent when that one ends.
        """
        await self._do(ipc.HoldCall, on=on)

    async def play_tone(self, freq_hz: float, level_dbfs: float = -12.0) -> None:
        """Send a sine tone instead of the call's audio (operator audio check, tests)."""
        await self._do(ipc.PlayTone, freq_hz=freq_hz, level_dbfs=level_dbfs)

    async def stop_tone(self) -> None:
        await self._do(ipc.PlayTone, freq_hz=0.0)

    # ------------------------------------------------------------ WebRTC leg (same worker)
    async def _media(self, build: Any, timeout_s: float = 15.0) -> str:
        if self.end is not None:
            raise NoSuchCall(f"call {self.id} has ended")
        try:
            reply = await self._worker.request(build, timeout_s=timeout_s)
        except WorkerDied:
            raise NoSuchCall(f"call {self.id} was lost with its worker") from None
        return str(reply.value)

    async def webrtc_answer(self, offer_sdp: str, ice_servers: list[dict[str, Any]]) -> str:
        """Answer the Matrix side's offer; the worker pumps audio between the legs."""
        servers = json.dumps(ice_servers)
        return await self._media(lambda req: media_ipc.WebrtcAnswer(
            req=req, call=self.id, offer_sdp=offer_sdp, ice_servers=servers))

    async def webrtc_offer(self, ice_servers: list[dict[str, Any]]) -> str:
        servers = json.dumps(ice_servers)
        return await self._media(lambda req: media_ipc.WebrtcOffer(
            req=req, call=self.id, ice_servers=servers))

    async def webrtc_accept(self, answer_sdp: str) -> None:
        await self._media(lambda req: media_ipc.WebrtcAccept(
            req=req, call=self.id, answer_sdp=answer_sdp))

    async def webrtc_candidates(self, candidates: list[dict[str, Any]]) -> None:
        data = json.dumps(candidates)
        await self._media(lambda req: media_ipc.WebrtcCandidates(
            req=req, call=self.id, candidates=data))

    async def webrtc_renegotiate(self, offer_sdp: str) -> str:
        return await self._media(lambda req: media_ipc.WebrtcRenegotiate(
            req=req, call=self.id, offer_sdp=offer_sdp))

    async def probe_audio(self, seconds: float = 1.0) -> AudioReport:
        """Analyse the next ``seconds`` of audio received from SIP."""
        if self.end is not None:
            raise NoSuchCall(f"call {self.id} has ended")
        try:
            report = await self._worker.request(
                lambda req: ipc.ProbeAudio(req=req, call=self.id, seconds=seconds),
                timeout_s=seconds + 10.0,
            )
        except WorkerDied:
            raise NoSuchCall(f"call {self.id} was lost with its worker") from None
        return AudioReport(report.freq_hz, report.level_dbfs, report.frames)
