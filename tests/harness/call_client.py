"""A Matrix-side test call client that speaks ``m.call.*`` the way Element's matrix-js-sdk
does (legacy 1:1 VoIP, protocol version "1"), with its own WebRTC stack
(:mod:`tests.harness.rtc_peer`, plain aiortc, nothing imported from ``bridge``).

It is decoupled from the Matrix transport: give it any object with
``async send(event_type, content) -> event_id`` and ``events() -> AsyncIterator[event]``
(:class:`RoomTransport`; ``tests.harness.matrix_user.RoomTransport`` over the real
client-server API, ``tests.harness.memory_room`` in unit tests).

What it does, as matrix-js-sdk does:

- **Calling:** ``m.call.invite`` with ``version: "1"``, ``call_id``, ``party_id``,
  ``lifetime`` 60000, ``offer {type, sdp}``, ``capabilities``, stream metadata and no
  ``invitee``; hangs up with ``invite_timeout`` when ``lifetime`` passes unanswered. On the
  first ``m.call.answer`` it picks that party, applies the candidates buffered from it, and
  sends ``m.call.select_answer``; answers from other parties are ignored.
- **Answering** an ``m.call.invite``: ``m.call.answer`` with ``capabilities``, then
  candidates; a ``select_answer`` naming another party ends the call (answered_elsewhere).
- **Candidates** in ``m.call.candidates`` batches, sent again (duplicates) and closed with
  ``{"candidate": ""}`` unless configured otherwise (:class:`CallOptions`).
- **Hold/resume:** ``m.call.negotiate`` with ``description`` (offer, audio ``sendonly`` /
  ``sendrecv``) and ``lifetime``; incoming negotiate offers are answered with a negotiate
  answer.
- ``m.call.hangup`` (with ``reason``) and ``m.call.reject``; version-0 peers (integer
  ``version: 0``, no ``party_id``) are accepted: no select_answer, reject becomes hangup.
- DTMF as RFC 4733 ``telephone-event`` on the media (Chrome's ``insertDTMF``), a tone played
  into the call and a recording of what is received, for analysis by content.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.harness.rtc_peer import RtcPeer, sections, strip_candidates

log = logging.getLogger(__name__)

SDP_STREAM_METADATA = "org.matrix.msc3077.sdp_stream_metadata"
CALL_EVENTS = (
    "m.call.invite", "m.call.candidates", "m.call.answer", "m.call.select_answer",
    "m.call.negotiate", "m.call.hangup", "m.call.reject",
)


class RoomTransport(Protocol):
    async def send(self, event_type: str, content: dict[str, Any]) -> str: ...

    def events(self) -> AsyncIterator[dict[str, Any]]: ...


class CallState(enum.StrEnum):
    IDLE = "idle"
    INVITE_SENT = "invite_sent"
    RINGING = "ringing"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    ENDED = "ended"


_LINGERING: set[asyncio.Future[Any]] = set()


async def _bounded(aw: Any, seconds: float) -> None:
    """Await at most `seconds`. Unlike asyncio.wait_for, never waits for a cancellation that
    the awaited code swallows (aiortc's close can hang on a connection that never started)."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        _LINGERING.add(task)
        task.add_done_callback(_LINGERING.discard)
    elif not task.cancelled():
        task.exception()


@dataclass
class CallOptions:
    video: bool = False
    lifetime_ms: int = 60000
    #: leave the gathered candidates in the SDP too (Element does when they came in time)
    candidates_in_sdp: bool = False
    candidate_batches: int = 2
    duplicate_candidates: bool = True
    end_of_candidates: bool = True
    candidate_delay: float = 0.05
    #: audio codec preference of the client's WebRTC stack (None: Opus first, like Chrome)
    codecs: list[str] | None = None
    record_rate: int = 8000
    capabilities: dict[str, Any] = field(
        default_factory=lambda: {"m.call.transferee": False, "m.call.dtmf": False}
    )
    hangup_on_ice_failure: bool = True


def _version(content: dict[str, Any]) -> int:
    v = content.get("version", 0)
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1


class CallClient:
    """One user's side of one call at a time (see the module docstring)."""

    def __init__(self, transport: RoomTransport, options: CallOptions | None = None, *,
                 party_id: str | None = None, name: str = "client",
                 user_id: str | None = None) -> None:
        self.transport = transport
        self.user_id = user_id
        self.options = options or CallOptions()
        self.party_id = party_id or secrets.token_hex(5).upper()
        self.name = name
        self.state = CallState.IDLE
        self.call_id: str | None = None
        self.opponent_party_id: str | None = None
        self.opponent_version: int = 1
        self.invite: dict[str, Any] | None = None
        self.remote_capabilities: dict[str, Any] = {}
        self.hangup_reason: str | None = None
        self.ended_by: str | None = None
        self.rejected = False
        self.remote_on_hold = False  # we put the other side on hold
        self.local_on_hold = False  # the other side put us on hold
        self.peer: RtcPeer | None = None
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.received: list[dict[str, Any]] = []
        self._choosing = False
        self._tone: tuple[float, float] | None = None
        self._buffered: dict[str | None, list[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()
        self._negotiation: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.Future[Any]] = []
        self._candidates_task: asyncio.Future[Any] | None = None

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"call-client-{self.name}")

    async def close(self) -> None:
        for t in [*self._timers, self._task]:
            if t is not None and t is not asyncio.current_task():
                t.cancel()
                await asyncio.wait({t}, timeout=2.0)
        self._task = None
        if self.peer is not None:
            # aiortc's close can wait forever on a connection that never got an answer.
            await _bounded(self.peer.close(), 5.0)

    async def __aenter__(self) -> CallClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- placing and answering ---------------------------------------------------------
    async def place_call(self, *, video: bool | None = None) -> str:
        """Send an ``m.call.invite``; returns the call ID."""
        await self.start()
        async with self._lock:
            if self.state not in (CallState.IDLE, CallState.ENDED):
                raise RuntimeError(f"cannot place a call in state {self.state}")
            self._reset()
            self.call_id = f"{int(time.time() * 1000)}{secrets.token_hex(8)}"
            video = self.options.video if video is None else video
            self.peer = self._new_peer(video)
            offer = await self.peer.create_offer()
            self._set_state(CallState.INVITE_SENT)
            await self._send("m.call.invite", {
                "lifetime": self.options.lifetime_ms,
                "offer": {"type": "offer", "sdp": self._outgoing_sdp(offer)},
                "capabilities": dict(self.options.capabilities),
                SDP_STREAM_METADATA: self._stream_metadata(video),
            })
            self._candidates_task = self._later(self._send_candidates())
            self._later(self._invite_timeout())
            return self.call_id

    async def wait_for_invite(self, timeout: float = 15.0) -> dict[str, Any]:
        await self.start()
        await self.wait_for_state(CallState.RINGING, timeout=timeout)
        assert self.invite is not None
        return self.invite

    async def answer(self) -> None:
        async with self._lock:
            if self.state != CallState.RINGING or self.invite is None:
                raise RuntimeError(f"nothing to answer in state {self.state}")
            self.peer = self._new_peer(False)
            answer = await self.peer.answer(self.invite["offer"]["sdp"])
            self._set_state(CallState.CONNECTING)
            await self._send("m.call.answer", {
                "answer": {"type": "answer", "sdp": self._outgoing_sdp(answer)},
                "capabilities": dict(self.options.capabilities),
                SDP_STREAM_METADATA: self._stream_metadata(False),
            })
            await self._apply_buffered(self.opponent_party_id)
            self._watch_connection()
            self._candidates_task = self._later(self._send_candidates())

    async def reject(self) -> None:
        async with self._lock:
            if self.state != CallState.RINGING:
                raise RuntimeError(f"cannot reject in state {self.state}")
            if self.opponent_version == 0:
                await self._send("m.call.hangup", {})
            else:
                await self._send("m.call.reject", {})
            self.rejected = True
            await self._end("user_hangup", "local")

    async def hangup(self, reason: str = "user_hangup") -> None:
        async with self._lock:
            if self.state in (CallState.IDLE, CallState.ENDED):
                return
            content = {} if (self.opponent_version == 0 and reason == "user_hangup") else {
                "reason": reason}
            await self._send("m.call.hangup", content)
            await self._end(reason, "local")

    # --- in call ------------------------------------------------------------------------
    async def hold(self, timeout: float = 10.0) -> None:
        """Put the other side on hold (audio ``sendonly``), as Element's hold button does."""
        await self._renegotiate("sendonly", timeout)
        self.remote_on_hold = True

    async def resume(self, timeout: float = 10.0) -> None:
        await self._renegotiate("sendrecv", timeout)
        self.remote_on_hold = False

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        """RFC 4733 digits on the media, the way Chrome's ``RTCDTMFSender`` sends them."""
        if self.peer is None:
            raise RuntimeError("no call")
        self.peer.send_dtmf(digits, duration_ms)

    @property
    def received_dtmf(self) -> list[str]:
        return list(self.peer.received_dtmf) if self.peer else []

    def play_tone(self, freq_hz: float, level_dbfs: float = -12.0) -> None:
        self._tone = (freq_hz, level_dbfs)
        if self.peer is not None:
            self.peer.tone.freq, self.peer.tone.level_dbfs = freq_hz, level_dbfs

    def stop_tone(self) -> None:
        self._tone = None
        if self.peer is not None:
            self.peer.tone.freq = None

    async def record(self, seconds: float) -> bytes:
        """What arrives during the next ``seconds``: int16 mono PCM at ``record_rate``."""
        if self.peer is None:
            raise RuntimeError("no call")
        self.peer.recorder.clear()
        await asyncio.sleep(seconds)
        return self.peer.recorder.take()

    @property
    def record_rate(self) -> int:
        return self.options.record_rate

    # --- waiting and reporting ---------------------------------------------------------
    async def wait_for_state(self, *states: CallState, timeout: float = 15.0) -> CallState:
        deadline = time.monotonic() + timeout
        while self.state not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: state {self.state}, expected {states}")
            await asyncio.sleep(0.02)
        return self.state

    async def wait_for_event(self, event_type: str, timeout: float = 15.0,
                             where: Callable[[dict[str, Any]], bool] = lambda _e: True,
                             ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.received:
                if ev.get("type") == event_type and where(ev):
                    return ev
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {event_type} within {timeout} s")
            await asyncio.sleep(0.02)

    async def wait_for_dtmf(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.received_dtmf) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: DTMF so far {self.received_dtmf}")
            await asyncio.sleep(0.02)
        return self.received_dtmf

    async def wait_candidates_sent(self, timeout: float = 10.0) -> None:
        """Until every ``m.call.candidates`` batch of the current call has been sent."""
        if self._candidates_task is not None:
            await asyncio.wait_for(asyncio.shield(self._candidates_task), timeout)

    def report(self) -> dict[str, Any]:
        return {
            "state": self.state.value, "call_id": self.call_id, "party_id": self.party_id,
            "opponent_party_id": self.opponent_party_id, "hangup_reason": self.hangup_reason,
            "ended_by": self.ended_by, "rejected": self.rejected,
            "remote_on_hold": self.remote_on_hold, "local_on_hold": self.local_on_hold,
            "received_dtmf": self.received_dtmf,
            "connection": self.peer.pc.connectionState if self.peer else None,
        }

    def sent_of(self, event_type: str) -> list[dict[str, Any]]:
        return [c for t, c in self.sent if t == event_type]

    # --- event handling ----------------------------------------------------------------
    async def _run(self) -> None:
        async for event in self.transport.events():
            if event.get("type") not in CALL_EVENTS:
                continue
            content = event.get("content") or {}
            if content.get("party_id") == self.party_id and _version(content) != 0:
                continue  # our own echo
            self.received.append(event)
            try:
                async with self._lock:
                    await self._handle(event["type"], content)
            except Exception:
                log.exception("%s: handling %s failed", self.name, event.get("type"))

    async def _handle(self, kind: str, content: dict[str, Any]) -> None:
        if kind == "m.call.invite":
            await self._on_invite(content)
            return
        if content.get("call_id") != self.call_id or self.state == CallState.ENDED:
            return
        party = content.get("party_id") if _version(content) != 0 else None
        if kind == "m.call.answer":
            await self._on_answer(content, party)
        elif kind == "m.call.candidates":
            await self._on_candidates(content, party)
        elif kind == "m.call.select_answer":
            if self.state != CallState.INVITE_SENT and content.get(
                    "selected_party_id") not in (None, self.party_id):
                await self._end("answered_elsewhere", "remote")
        elif kind == "m.call.negotiate":
            await self._on_negotiate(content)
        elif kind == "m.call.hangup":
            if self._from_opponent(party) or self.state in (
                    CallState.RINGING, CallState.INVITE_SENT):
                await self._end(content.get("reason") or "user_hangup", "remote")
        elif kind == "m.call.reject" and self.state in (CallState.INVITE_SENT, CallState.RINGING):
            self.rejected = True
            await self._end(content.get("reason") or "user_hangup", "remote")

    def _from_opponent(self, party: str | None) -> bool:
        return self.opponent_party_id is None or party == self.opponent_party_id

    async def _on_invite(self, content: dict[str, Any]) -> None:
        if self.state not in (CallState.IDLE, CallState.ENDED):
            log.info("%s: busy, ignoring invite %s", self.name, content.get("call_id"))
            return
        offer = content.get("offer") or {}
        if not isinstance(offer.get("sdp"), str):
            return
        invitee = content.get("invitee")
        if invitee and self.user_id and invitee != self.user_id:
            return  # addressed to another member of the room
        self._reset()
        self.call_id = content.get("call_id")
        self.opponent_version = _version(content)
        self.opponent_party_id = content.get("party_id") if self.opponent_version != 0 else None
        self.remote_capabilities = dict(content.get("capabilities") or {})
        self.invite = content
        self._set_state(CallState.RINGING)

    async def _on_answer(self, content: dict[str, Any], party: str | None) -> None:
        if self.state != CallState.INVITE_SENT or self._choosing:
            return  # an answer was chosen already
        self._choosing = True
        assert self.peer is not None
        self.opponent_version = _version(content)
        self.opponent_party_id = party
        self.remote_capabilities = dict(content.get("capabilities") or {})
        self._set_state(CallState.CONNECTING)
        await self.peer.accept_answer(content["answer"]["sdp"])
        await self._apply_buffered(party)
        if party is not None:
            await self._send("m.call.select_answer", {"selected_party_id": party})
        self._watch_connection()

    async def _on_candidates(self, content: dict[str, Any], party: str | None) -> None:
        candidates = [c for c in content.get("candidates") or [] if isinstance(c, dict)]
        if self.peer is None or self.state in (CallState.INVITE_SENT, CallState.RINGING):
            self._buffered.setdefault(party, []).extend(candidates)
            return
        if party != self.opponent_party_id:
            return
        await self._add_candidates(candidates)

    async def _apply_buffered(self, party: str | None) -> None:
        await self._add_candidates(self._buffered.pop(party, []))
        self._buffered.clear()

    async def _add_candidates(self, candidates: list[dict[str, Any]]) -> None:
        assert self.peer is not None
        for c in candidates:
            if c.get("candidate") and c.get("sdpMid") is None and c.get("sdpMLineIndex") is None:
                continue
            try:
                await self.peer.add_candidate(c)
            except Exception as exc:
                log.info("%s: candidate %s not added: %s", self.name, c, exc)

    async def _on_negotiate(self, content: dict[str, Any]) -> None:
        description = content.get("description") or {}
        if self.peer is None or not isinstance(description.get("sdp"), str):
            return
        if description.get("type") == "offer":
            answer = await self.peer.answer(description["sdp"])
            _, media = sections(answer)
            direction = next((x[2:] for x in media[0] if x[2:] in (
                "sendrecv", "sendonly", "recvonly", "inactive")), "sendrecv")
            self.local_on_hold = direction in ("recvonly", "inactive")
            await self._send("m.call.negotiate", {
                "description": {"type": "answer", "sdp": self._outgoing_sdp(answer)},
                SDP_STREAM_METADATA: self._stream_metadata(self.peer.video is not None),
            })
        elif description.get("type") == "answer":
            await self.peer.accept_answer(description["sdp"])
            if self._negotiation is not None and not self._negotiation.done():
                self._negotiation.set_result(None)

    async def _renegotiate(self, direction: str, timeout: float) -> None:
        async with self._lock:
            if self.state not in (CallState.CONNECTING, CallState.CONNECTED) or not self.peer:
                raise RuntimeError(f"cannot renegotiate in state {self.state}")
            self._negotiation = asyncio.get_running_loop().create_future()
            offer = await self.peer.create_offer(direction)
            await self._send("m.call.negotiate", {
                "lifetime": self.options.lifetime_ms,
                "description": {"type": "offer", "sdp": self._outgoing_sdp(offer)},
                "capabilities": dict(self.options.capabilities),
                SDP_STREAM_METADATA: self._stream_metadata(self.peer.video is not None),
            })
        await asyncio.wait_for(self._negotiation, timeout)

    # --- helpers -----------------------------------------------------------------------
    def _reset(self) -> None:
        self.call_id = None
        self.opponent_party_id = None
        self.opponent_version = 1
        self.invite = None
        self.hangup_reason = self.ended_by = None
        self.rejected = self._choosing = False
        self.remote_on_hold = self.local_on_hold = False
        self._buffered.clear()

    def _new_peer(self, video: bool) -> RtcPeer:
        peer = RtcPeer(video=video, codecs=self.options.codecs,
                       record_rate=self.options.record_rate)
        if self._tone is not None:
            peer.tone.freq, peer.tone.level_dbfs = self._tone
        return peer

    def _outgoing_sdp(self, sdp: str) -> str:
        return sdp if self.options.candidates_in_sdp else strip_candidates(sdp)

    def _stream_metadata(self, video: bool) -> dict[str, Any]:
        assert self.peer is not None
        _, media = sections(self.peer.local_sdp)
        msid = next((x.split(":", 1)[1].split()[0] for x in media[0] if x.startswith("a=msid:")),
                    "stream")
        return {msid: {"purpose": "m.usermedia", "audio_muted": False, "video_muted": not video}}

    async def _send(self, event_type: str, content: dict[str, Any]) -> str:
        full = {**content, "version": "1", "call_id": self.call_id, "party_id": self.party_id}
        self.sent.append((event_type, full))
        log.debug("%s -> %s", self.name, event_type)
        return await self.transport.send(event_type, full)

    async def _send_candidates(self) -> None:
        if self.options.candidates_in_sdp or self.peer is None:
            return
        candidates = self.peer.local_candidates()
        n = max(1, self.options.candidate_batches)
        batches = [candidates[i::n] for i in range(n)]
        if self.options.duplicate_candidates:
            batches.append(list(candidates))
        batches = [b for b in batches if b] or [[]]
        if self.options.end_of_candidates:
            batches[-1] = [*batches[-1], {"candidate": ""}]
        for batch in batches:
            await asyncio.sleep(self.options.candidate_delay)
            if self.state == CallState.ENDED:
                return
            if batch:
                await self._send("m.call.candidates", {"candidates": batch})

    async def _invite_timeout(self) -> None:
        await asyncio.sleep(self.options.lifetime_ms / 1000)
        if self.state == CallState.INVITE_SENT:
            await self.hangup("invite_timeout")

    def _watch_connection(self) -> None:
        peer = self.peer
        assert peer is not None

        async def watch() -> None:
            connected = asyncio.ensure_future(peer.connected.wait())
            failed = asyncio.ensure_future(peer.failed.wait())
            await asyncio.wait([connected, failed], return_when=asyncio.FIRST_COMPLETED)
            connected.cancel()
            failed.cancel()
            if peer is not self.peer or self.state == CallState.ENDED:
                return
            if peer.connected.is_set():
                self._set_state(CallState.CONNECTED)
            elif self.options.hangup_on_ice_failure:
                await self.hangup("ice_failed")

        self._later(watch())

    def _later(self, coro: Any) -> asyncio.Future[Any]:
        self._timers = [t for t in self._timers if not t.done()]
        task = asyncio.ensure_future(coro)
        self._timers.append(task)
        return task

    async def _end(self, reason: str, by: str) -> None:
        self.hangup_reason = reason
        self.ended_by = by
        self._set_state(CallState.ENDED)
        if self._negotiation is not None and not self._negotiation.done():
            self._negotiation.set_exception(RuntimeError("call ended"))
        if self.peer is not None:
            await _bounded(self.peer.close(), 5.0)

    def _set_state(self, state: CallState) -> None:
        if state != self.state:
            log.info("%s call %s: %s -> %s", self.name, self.call_id, self.state, state)
            self.state = state
