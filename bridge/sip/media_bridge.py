"""Inside a worker: the WebRTC leg of each call and the audio pump between it and SIP.

For each call that has a WebRTC leg, 20 ms frames are handed on as they arrive, in the loop,
with no task in between: SIP → WebRTC (``CallAudio.forward_to`` → ``leg.write_frame``) and
WebRTC → SIP (``leg.forward_frames`` → ``CallAudio.write``). pjmedia's clock paces the first;
the second is read by that clock too, which plays silence while the browser sends nothing.
DTMF crosses over in both directions: RFC 4733 digits from the browser are sent on the SIP
call, digits from SIP are sent to the browser.
Hold from the Matrix side (a sendonly/inactive offer) becomes a SIP re-INVITE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from bridge.media.errors import MediaError
from bridge.media.leg import IceServer, LegState
from bridge.media.webrtc import WebRtcLeg

from .audio import CallAudio
from .errors import NoSuchCall, SipError
from .media_ipc import (
    AudioCounts,
    MediaState,
    WebrtcAccept,
    WebrtcAnswer,
    WebrtcCandidates,
    WebrtcOffer,
    WebrtcRenegotiate,
)

log = logging.getLogger(__name__)


class MediaCommandError(SipError):
    """A WebRTC leg command failed (bad SDP from the Matrix side, negotiation failure)."""

    code = "media_error"


class CallMedia:
    """One call's WebRTC leg and pump."""

    def __init__(self, call_id: str, leg: WebRtcLeg) -> None:
        self.call_id = call_id
        self.leg = leg
        self.pumping = False
        self.audio: CallAudio | None = None
        self.held = False


class MediaBridge:
    def __init__(
        self,
        *,
        host_addresses: tuple[str, ...],
        codecs: tuple[str, ...],
        clock_rate: int,
        audio_for: Callable[[str], CallAudio],
        send_sip_dtmf: Callable[[str, str], Any],
        set_sip_hold: Callable[[str, bool], Any] | None,
        emit: Callable[[Any], None],
    ) -> None:
        self.host_addresses = host_addresses
        # The SIP leg's codecs first, so no transcoding is needed when the browser has them.
        self.codecs = (*codecs, "opus")
        self.clock_rate = clock_rate
        self.audio_for = audio_for
        self.send_sip_dtmf = send_sip_dtmf
        self.set_sip_hold = set_sip_hold
        self.emit = emit
        self.calls: dict[str, CallMedia] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    def _background(self, aw: Any) -> None:
        fut = asyncio.ensure_future(aw)
        self._tasks.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.info("background media task failed: %s", fut.exception())

    # ------------------------------------------------------------ commands
    async def handle(self, msg: Any) -> str:
        if isinstance(msg, WebrtcAnswer):
            leg = self._new_leg(msg.call, msg.ice_servers)
            try:
                sdp = await leg.answer(msg.offer_sdp)
            except MediaError as e:
                await self.close(msg.call)
                raise MediaCommandError(f"cannot answer the WebRTC offer: {e}") from e
            self._start_pump(msg.call)
            return sdp
        if isinstance(msg, WebrtcOffer):
            leg = self._new_leg(msg.call, msg.ice_servers)
            return await leg.create_offer()
        media = self.calls.get(msg.call)
        if media is None:
            raise NoSuchCall(f"call {msg.call} has no WebRTC leg")
        if isinstance(msg, WebrtcAccept):
            try:
                await media.leg.accept_answer(msg.answer_sdp)
            except MediaError as e:
                raise MediaCommandError(f"bad WebRTC answer: {e}") from e
            self._start_pump(msg.call)
            return ""
        if isinstance(msg, WebrtcCandidates):
            for cand in json.loads(msg.candidates):
                with contextlib.suppress(MediaError):
                    await media.leg.add_remote_candidate(cand)
            return ""
        if isinstance(msg, WebrtcRenegotiate):
            try:
                answer = await media.leg.renegotiate(msg.offer_sdp)
            except MediaError as e:
                raise MediaCommandError(f"bad WebRTC re-offer: {e}") from e
            held = media.leg.direction in ("recvonly", "inactive")
            if held != media.held:
                media.held = held
                log.info("call %s: Matrix side %s", msg.call, "holds" if held else "resumes")
                self.emit(MediaState(call=msg.call, state="held" if held else "resumed"))
                if self.set_sip_hold is not None:
                    try:
                        await self.set_sip_hold(msg.call, held)
                    except Exception as e:  # the Matrix side's answer must not fail for it
                        log.warning("call %s: SIP %s failed: %s", msg.call,
                                    "hold" if held else "resume", e)
            return answer
        raise SipError(f"unknown media command {type(msg).__name__}")

    def _new_leg(self, call_id: str, ice_json: str) -> WebRtcLeg:
        old = self.calls.pop(call_id, None)
        if old is not None:
            self._background(self._close_media(old))
        servers = [IceServer.from_dict(s) for s in json.loads(ice_json or "[]")]
        leg = WebRtcLeg(
            ice_servers=servers,
            host_addresses=self.host_addresses,
            codec_preference=self.codecs,
            clock_rate=self.clock_rate,
            label=call_id,
        )
        leg.on_state = lambda state: self._on_state(call_id, state)
        leg.on_dtmf = lambda digit: self._on_webrtc_dtmf(call_id, digit)
        self.calls[call_id] = CallMedia(call_id, leg)
        return leg

    # ------------------------------------------------------------ events
    def _on_state(self, call_id: str, state: LegState) -> None:
        if state == LegState.CONNECTED:
            log.info("call %s: WebRTC leg connected", call_id)
            self.emit(MediaState(call=call_id, state="connected"))
        elif state == LegState.FAILED:
            log.warning("call %s: WebRTC leg failed", call_id)
            self.emit(MediaState(call=call_id, state="failed"))

    def _on_webrtc_dtmf(self, call_id: str, digit: str) -> None:
        log.info("call %s: DTMF %s from Matrix", call_id, digit)
        result = self.send_sip_dtmf(call_id, digit)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            self._background(result)

    def dtmf_from_sip(self, call_id: str, digit: str) -> None:
        media = self.calls.get(call_id)
        if media is None:
            return
        try:
            media.leg.send_dtmf(digit)
        except MediaError as e:
            log.info("call %s: DTMF %s not sent to Matrix: %s", call_id, digit, e)

    # ------------------------------------------------------------ pump
    def _start_pump(self, call_id: str) -> None:
        media = self.calls.get(call_id)
        if media is None or media.pumping:
            return
        try:
            media.audio = self.audio_for(call_id)
        except SipError as e:
            log.warning("call %s: no SIP audio to pump: %s", call_id, e)
            return
        audio, leg = media.audio, media.leg
        media.pumping = True
        audio.forward_to(leg.write_frame)
        leg.forward_frames(partial(self._to_sip, audio))

    @staticmethod
    def _to_sip(audio: CallAudio, frame: bytes) -> None:
        if not audio.closed and len(frame) == audio.frame_bytes:
            audio.write(frame)

    # ------------------------------------------------------------ end
    async def close(self, call_id: str) -> None:
        media = self.calls.pop(call_id, None)
        if media is not None:
            await self._close_media(media)

    async def _close_media(self, media: CallMedia) -> None:
        media.leg.forward_frames(None)
        if media.audio is not None:
            media.audio.forward_to(None)
        if media.audio is not None:
            self.emit(self._counts(media.call_id, media.leg, media.audio))
        # asyncio.wait, not wait_for: never wait on a cancellation aiortc might swallow.
        task = asyncio.ensure_future(media.leg.close())
        done, _ = await asyncio.wait({task}, timeout=5.0)
        if not done:
            log.warning("call %s: the WebRTC leg did not close within 5 s", media.call_id)
            self._tasks.add(task)
            task.add_done_callback(self._done)
        elif not task.cancelled() and task.exception() is not None:
            log.debug("call %s: closing the WebRTC leg: %s", media.call_id, task.exception())

    @staticmethod
    def _counts(call_id: str, leg: WebRtcLeg, audio: CallAudio) -> AudioCounts:
        out_lost, in_frames, in_dropped = leg.frame_counts()
        tx_frames, tx_lost = audio.tx_counts()
        counts = AudioCounts(
            call=call_id,
            to_matrix_frames=audio.rx_delivered, to_matrix_lost=audio.rx_dropped + out_lost,
            to_sip_frames=tx_frames, to_sip_lost=tx_lost + in_dropped)
        log.info("call %s: audio frames to Matrix %d (%d lost), to SIP %d (%d lost; %d "
                 "received from Matrix)", call_id, counts.to_matrix_frames,
                 counts.to_matrix_lost, counts.to_sip_frames, counts.to_sip_lost, in_frames)
        return counts

    async def close_all(self) -> None:
        for call_id in list(self.calls):
            await self.close(call_id)
