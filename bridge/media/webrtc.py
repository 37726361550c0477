"""The bridge's WebRTC leg (the Matrix side of a call) on aiortc.

One :class:`WebRtcLeg` per call: it answers Element's offer (or offers itself), takes trickled
candidates, answers ``m.call.negotiate`` offers (hold/resume), carries 20 ms PCM frames both
ways, sends and receives RFC 4733 DTMF, and reports its state. It implements
:class:`bridge.media.leg.MediaLeg`; nothing aiortc-specific leaks out of this module and its
helpers (``sdp``, ``ice``, ``dtmf``, ``tracks``, ``g711_rtp``, ``srtp_receive``).

aiortc only ever sees the audio m-section: other m-sections (video, data) are cut out of
offers before aiortc parses them and put back, rejected, into the answer (``sdp``). Codec
preferences are set on the transceiver before ``setRemoteDescription``, where aiortc picks its
codec. Host candidates are gathered on the configured addresses only (``ice``), and DTMF is
added beside aiortc (``dtmf``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.clock import current_ntp_time
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription as AiortcSdp
from aiortc.sdp import candidate_to_sdp

from bridge.media import fast_receive, ice, sdp, srtp_receive
from bridge.media.dtmf import RtpDtmf
from bridge.media.errors import (
    DtmfError,
    LegClosedError,
    MediaError,
    NegotiationError,
    SdpError,
)
from bridge.media.g711_rtp import G711Rtp, IdleTrack
from bridge.media.leg import DtmfCallback, IceServer, LegState, MediaStats, StateCallback
from bridge.media.tracks import G711, IncomingAudio, OutgoingTrack

log = logging.getLogger(__name__)

DEFAULT_CODECS = ("PCMU", "PCMA", "G722", "opus")
CLOCK_RATES = (8000, 16000)
_PC_STATES = {
    "connecting": LegState.CONNECTING,
    "connected": LegState.CONNECTED,
    "failed": LegState.FAILED,
    "closed": LegState.CLOSED,
}


class WebRtcLeg:
    """The WebRTC leg of one call (see the module docstring).

    :param ice_servers: STUN/TURN servers; empty means host candidates only (never aiortc's
        default public STUN server).
    :param host_addresses: the addresses host candidates are gathered on (127.0.0.1 in
        tests); empty keeps aioice's choice (every non-loopback interface).
    :param codec_preference: codec names in order of preference (PCMU, PCMA, G722, opus).
    :param clock_rate: rate of the 20 ms PCM frames given and returned (8000 or 16000).
    :param ice_timeout: seconds after the negotiation until a leg that has not connected
        reports FAILED (end-of-candidates may never come).
    :param direct_g711: move G.711 at 8 kHz on the RTP level (``g711_rtp``) instead of
        through aiortc's sender and receiver (False: the aiortc path, kept for comparison).
    """

    def __init__(
        self,
        ice_servers: Sequence[IceServer] = (),
        host_addresses: Sequence[str] = (),
        codec_preference: Sequence[str] = DEFAULT_CODECS,
        clock_rate: int = 8000,
        *,
        ice_timeout: float = 30.0,
        direct_g711: bool = True,
        label: str = "",
        on_state: StateCallback | None = None,
        on_dtmf: DtmfCallback | None = None,
    ) -> None:
        if clock_rate not in CLOCK_RATES:
            raise ValueError(f"clock_rate must be one of {CLOCK_RATES}, not {clock_rate}")
        self._hosts = ice.check_addresses(host_addresses)
        self._codecs = _capabilities(codec_preference)
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=ice.rtc_ice_servers(ice_servers)))
        self._pc.on("connectionstatechange", self._on_pc_state)
        self.clock_rate = clock_rate
        self.ice_timeout = ice_timeout
        self.label = label
        self.on_state = on_state
        self.on_dtmf = on_dtmf
        self._out = OutgoingTrack(clock_rate)
        self._in = IncomingAudio(clock_rate)
        self._dtmf = RtpDtmf(self._digit)
        self._g711: G711Rtp | None = None
        self._srtp_in: srtp_receive.DirectReceive | None = None
        self._direct_g711 = direct_g711
        self._transceiver: RTCRtpTransceiver | None = None
        self._lock = asyncio.Lock()
        self._state = LegState.NEW
        self._negotiated = False
        self._mid: str | None = None
        self._audio_index = 0
        self._remote_ufrag: str | None = None
        self._local_sdp: str | None = None
        self._offer_events: dict[int, int] = {}
        self._send_codec: tuple[str, int] | None = None
        self._seen: set[tuple[Any, ...]] = set()
        self._pending: list[RTCIceCandidate] = []
        self._pending_end = False
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False

    # --- properties --------------------------------------------------------------------
    @property
    def state(self) -> LegState:
        return self._state

    @property
    def dtmf_supported(self) -> bool:
        return self._send_codec is not None and self._dtmf.can_send(self._send_codec[1])

    @property
    def direction(self) -> str | None:
        return self._transceiver.currentDirection if self._transceiver else None

    @property
    def local_description(self) -> str | None:
        return self._local_sdp

    # --- offer / answer ----------------------------------------------------------------
    async def answer(self, offer_sdp: str) -> str:
        """Answer the first offer (audio only; other m-lines are rejected with port 0)."""
        async with self._lock:
            self._check_open()
            if self._transceiver is not None:
                raise NegotiationError("answer() takes the first offer only; use renegotiate()")
            offer, index = self._parse_offer(offer_sdp)
            self._add_transceiver()
            answer = await self._answer(offer, index)
            self._remote_ufrag = offer.ice_credentials(index)[0]
            await self._negotiated_now()
            return answer

    async def renegotiate(self, offer_sdp: str) -> str:
        """Answer a later offer (``m.call.negotiate``): hold (sendonly/inactive), resume."""
        async with self._lock:
            self._check_open()
            if not self._negotiated:
                raise NegotiationError("renegotiate() before the first offer/answer completed")
            if self._pc.signalingState != "stable":
                raise NegotiationError("an offer of ours is pending (glare); cannot renegotiate")
            offer, index = self._parse_offer(offer_sdp)
            if offer.media[index].mid != self._mid:
                raise NegotiationError(
                    f"renegotiation moved the audio to mid {offer.media[index].mid!r} "
                    f"(was {self._mid!r})"
                )
            if offer.ice_credentials(index)[0] != self._remote_ufrag:
                raise NegotiationError("ICE restart (new ice-ufrag) is not supported")
            answer = await self._answer(offer, index)
            log.info("%s renegotiated: direction %s", self.label, self.direction)
            return answer

    async def create_offer(self, direction: str = "sendrecv") -> str:
        """Our offer: the first one (an outgoing call) or a later one (e.g. ``sendonly`` to
        put the Matrix side on hold). Complete it with :meth:`accept_answer`."""
        if direction not in sdp.DIRECTIONS:
            raise ValueError(f"direction must be one of {sdp.DIRECTIONS}")
        async with self._lock:
            self._check_open()
            if self._transceiver is None:
                self._add_transceiver()
            elif self._pc.signalingState != "stable":
                raise NegotiationError(
                    f"cannot offer in signalling state {self._pc.signalingState}"
                )
            assert self._transceiver is not None
            self._transceiver.direction = direction
            with ice.host_addresses(self._hosts):
                await self._pc.setLocalDescription(await self._pc.createOffer())
            local = sdp.parse(self._pc.localDescription.sdp, "local offer")
            audio = local.media[0]
            if not self._offer_events:
                rates = sorted({8000, *(rate for _pt, _n, rate in audio.codecs())})
                self._offer_events = sdp.free_payload_types(audio, rates)
            sdp.add_telephone_events(audio, self._offer_events)
            self._mid = audio.mid
            self._audio_index = 0
            self._local_sdp = local.text()
            return self._local_sdp

    async def accept_answer(self, answer_sdp: str) -> None:
        """Take the peer's answer to our last offer."""
        async with self._lock:
            self._check_open()
            if self._pc.signalingState != "have-local-offer":
                raise NegotiationError("accept_answer() without an offer of ours pending")
            answer = sdp.parse(answer_sdp, "answer")
            index = next((i for i, m in enumerate(answer.media) if m.mid == self._mid), None)
            if index is None:
                raise SdpError(f"answer has no m-line with our audio mid {self._mid!r}")
            if answer.media[index].port == 0:
                raise NegotiationError("the peer rejected our audio m-line (port 0)")
            sdp.find_audio(answer, "answer")
            ufrag = answer.ice_credentials(index)[0]
            if self._negotiated and ufrag != self._remote_ufrag:
                raise NegotiationError("ICE restart (new ice-ufrag) is not supported")
            section = answer.media[index]
            await self._set_remote(sdp.audio_only(answer, index), "answer")
            self._remote_ufrag = ufrag
            mine = [c.mimeType.split("/", 1)[1].lower() for c in self._codecs]
            theirs = {name: rate for _pt, name, rate in section.codecs()}
            send = next(((n, theirs[n]) for n in mine if n in theirs), None)
            if send is None:
                raise NegotiationError("the answer names none of the codecs we offered")
            assert self._local_sdp is not None
            ours = sdp.parse(self._local_sdp, "local offer").media[self._audio_index]
            self._configure_dtmf(send, section, ours, section)
            await self._negotiated_now()

    async def add_remote_candidate(self, candidate: Mapping[str, Any]) -> None:
        """A trickled candidate ``{candidate, sdpMid, sdpMLineIndex}``; duplicates and
        candidates of rejected m-lines are ignored; ``{"candidate": ""}`` ends them."""
        parsed = ice.parse_candidate(candidate)
        async with self._lock:
            if self._state == LegState.CLOSED:
                return
            if parsed is None:
                self._pending_end = True
            else:
                key = ice.candidate_key(parsed)
                if key in self._seen or parsed.protocol.lower() != "udp":
                    return
                self._seen.add(key)
                self._pending.append(parsed)
            if self._negotiated:
                await self._apply_candidates()

    def local_candidates(self) -> list[dict[str, Any]]:
        """Our candidates (also in the SDP we returned), in the Matrix format."""
        if self._local_sdp is None:
            return []
        section = sdp.parse(self._local_sdp, "local SDP").media[self._audio_index]
        return [
            {"candidate": c, "sdpMid": self._mid, "sdpMLineIndex": self._audio_index}
            for c in section.candidates()
        ]

    # --- audio and DTMF ----------------------------------------------------------------
    async def read_frame(self) -> bytes:
        """The next 20 ms of received audio; silence when none came within ~60 ms."""
        return await self._in.read()

    def forward_frames(self, sink: Callable[[bytes], None] | None) -> None:
        """Give each 20 ms of received audio to ``sink`` as it arrives, in the loop, instead
        of holding it for :meth:`read_frame` (None: back to that). No silence is made up
        while nothing arrives: the receiving side fills its own gaps."""
        self._in.forward = sink

    def read_frame_nowait(self) -> bytes | None:
        return self._in.read_nowait()

    def write_frame(self, frame: bytes) -> None:
        """Send 20 ms of audio: at once on the G.711 RTP path (``g711_rtp``), otherwise
        queued for aiortc's sender (bounded: the oldest frame is dropped when full)."""
        if self._g711 is not None:
            self._g711.write(frame)
        else:
            self._out.push(frame)

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        """Queue RFC 4733 digits (0-9 * # A-D); raises DtmfError if not negotiated."""
        if not self.dtmf_supported:
            raise DtmfError("telephone-event was not negotiated with the peer")
        if self.direction not in ("sendrecv", "sendonly"):
            raise DtmfError(f"cannot send DTMF while the audio is {self.direction}")
        self._dtmf.queue(digits, duration_ms)

    def frame_counts(self) -> tuple[int, int, int]:
        """(frames lost on the way out: dropped or underrun, frames received, frames
        dropped on the way in)."""
        late = self._g711.late if self._g711 is not None else 0
        return self._out.dropped + self._out.underruns, self._in.frames, self._in.dropped + late

    def media_state(self) -> MediaStats:
        d = self._dtmf
        return MediaStats(
            state=self._state,
            codec=self._send_codec[0] if self._send_codec else None,
            clock_rate=self._send_codec[1] if self._send_codec else None,
            direction=self.direction,
            dtmf=self.dtmf_supported,
            rtp_sent=d.rtp_sent,
            rtp_received=d.rtp_received,
            dtmf_sent=d.events_sent,
            dtmf_received=d.events_received,
            frames_read=self._in.frames,
            frames_dropped=self._in.dropped + self._out.dropped,
            read_underruns=self._in.underruns,
            write_underruns=self._out.underruns,
        )

    async def close(self) -> None:
        """Stop the media and the peer connection; idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._in.stop()
        self._out.stop()
        await self._pc.close()
        self._set_state(LegState.CLOSED)

    # --- internals ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closing or self._state == LegState.CLOSED:
            raise LegClosedError("the WebRTC leg is closed")

    def _parse_offer(self, text: str) -> tuple[sdp.SessionDescription, int]:
        offer = sdp.parse(text, "offer")
        index = sdp.find_audio(offer, "offer")
        offered = {name for _pt, name, _rate in offer.media[index].codecs()}
        mine = [c.mimeType.split("/", 1)[1] for c in self._codecs]
        if not any(n.lower() in offered for n in mine):
            raise NegotiationError(
                f"no common audio codec: offered {sorted(offered)}, we accept {mine}"
            )
        return offer, index

    def _add_transceiver(self) -> None:
        t = self._pc.addTransceiver(self._out, direction="sendrecv")
        t.setCodecPreferences(self._codecs)
        self._transceiver = t
        if self.clock_rate == 8000:  # G.711 decoded in the loop (fast_receive.py)
            fast_receive.install(t.receiver, self._in.feed_pcm)
        try:
            self._dtmf.install(t.receiver.transport)
        except MediaError as exc:
            log.warning("%s: DTMF disabled: %s", self.label, exc)

    async def _answer(self, offer: sdp.SessionDescription, index: int) -> str:
        await self._set_remote(sdp.audio_only(offer, index), "offer")
        with ice.host_addresses(self._hosts):
            await self._pc.setLocalDescription(await self._pc.createAnswer())
        answer = sdp.full_answer(offer, index, self._pc.localDescription.sdp)
        section = answer.media[index]
        _pt, name, rate = section.codecs()[0]
        events = offer.media[index].telephone_events()
        chosen = {p: r for p, r in events.items() if r == rate}
        sdp.add_telephone_events(section, dict(sorted(chosen.items())[:1]))
        self._configure_dtmf((name, rate), section, section, offer.media[index])
        self._mid = section.mid
        self._audio_index = index
        self._local_sdp = answer.text()
        return self._local_sdp

    async def _set_remote(self, text: str, kind: str) -> None:
        try:
            AiortcSdp.parse(text)
        except Exception as exc:
            raise SdpError(f"{kind} could not be parsed: {type(exc).__name__} {exc}") from None
        try:
            with ice.host_addresses(self._hosts):
                await self._pc.setRemoteDescription(RTCSessionDescription(text, kind))
        except Exception as exc:
            raise NegotiationError(f"{kind} rejected by aiortc: {exc}") from exc

    def _configure_dtmf(
        self,
        send: tuple[str, int],
        negotiated: sdp.MediaSection,
        ours: sdp.MediaSection,
        theirs: sdp.MediaSection,
    ) -> None:
        """``negotiated``: the section whose telephone-event formats both sides agreed on
        (our answer, or the peer's answer to our offer); ``ours``: the section we sent."""
        self._send_codec = send
        self._out.stereo = send[0] == "opus"
        self._out.encoding = send[0]  # G.711 at 8 kHz: encoded here (tracks.py)
        clocks = {
            pt: rate
            for section in (ours, theirs)
            for pt, name, rate in section.codecs()
            if name not in ("telephone-event", "cn", "red")
        }
        events = negotiated.telephone_events()
        receive = set(events) | set(ours.telephone_events()) | set(theirs.telephone_events())
        ssrc = next((int(v.split()[0]) for v in ours.attrs("ssrc") if v.split()[0].isdigit()), 0)
        self._dtmf.configure(
            ssrc=ssrc, send_events=events, receive_pts=receive, audio_clocks=clocks
        )
        self._use_g711_rtp(send, negotiated, ssrc)

    def _connected_direction(self) -> str | None:
        return self.direction if self._state == LegState.CONNECTED else None

    def _use_g711_rtp(self, send: tuple[str, int], negotiated: sdp.MediaSection,
                      ssrc: int) -> None:
        """Move G.711 at 8 kHz ourselves (``g711_rtp``), once, where the hook allows it."""
        if not self._direct_g711 or self._g711 is not None or not self._dtmf.installed or not ssrc:
            return
        name, rate = send
        if self.clock_rate != 8000 or rate != 8000 or name not in G711:
            return
        pt = next((p for p, n, r in negotiated.codecs() if (n, r) == send), None)
        receive = {p: n for p, n, r in negotiated.codecs() if n in G711 and r == 8000}
        assert self._transceiver is not None
        transport = self._transceiver.receiver.transport
        if pt is None or transport is None:
            return
        g711 = G711Rtp(name, pt, receive, ssrc, transport._send_rtp, self._dtmf.downstream,
                       self._in.feed_pcm, self._connected_direction)
        self._dtmf.downstream = g711.on_rtp
        g711.report = _sender_report(self._transceiver.sender)
        self._transceiver.sender.replaceTrack(IdleTrack())
        self._g711 = g711
        self._srtp_in = srtp_receive.install(transport)
        log.debug("%s sends and receives %s itself (payload type %d)", self.label, name, pt)

    async def _negotiated_now(self) -> None:
        self._negotiated = True
        assert self._transceiver is not None
        track = self._transceiver.receiver.track
        if track is not None:
            self._in.start(track)
        await self._apply_candidates()
        if self._watchdog is None and self._state not in (LegState.CONNECTED, LegState.CLOSED):
            self._watchdog = asyncio.create_task(self._ice_watchdog(), name="webrtc-ice-timeout")
        log.info(
            "%s negotiated: codec %s, dtmf %s, direction %s",
            self.label, self._send_codec, self.dtmf_supported, self.direction,
        )

    async def _apply_candidates(self) -> None:
        pending, self._pending = self._pending, []
        for c in pending:
            if c.sdpMid is not None and c.sdpMid != self._mid:
                continue
            if c.sdpMid is None and c.sdpMLineIndex not in (None, self._audio_index):
                continue
            c.sdpMid, c.sdpMLineIndex = self._mid, 0
            log.debug("%s remote candidate %s", self.label, candidate_to_sdp(c))
            await self._pc.addIceCandidate(c)
        if self._pending_end:
            self._pending_end = False
            await self._pc.addIceCandidate(None)

    async def _ice_watchdog(self) -> None:
        await asyncio.sleep(self.ice_timeout)
        if self._state not in (LegState.CONNECTED, LegState.CLOSED):
            log.info("%s: not connected %.0f s after negotiation", self.label, self.ice_timeout)
            self._set_state(LegState.FAILED)

    def _on_pc_state(self) -> None:
        state = _PC_STATES.get(self._pc.connectionState)
        if state is not None:
            self._set_state(state)

    def _set_state(self, state: LegState) -> None:
        if state == self._state or self._state == LegState.CLOSED:
            return
        if self._state == LegState.FAILED and state != LegState.CLOSED:
            return
        log.info("%s state %s -> %s", self.label, self._state.value, state.value)
        self._state = state
        if state == LegState.CONNECTED and self._watchdog is not None:
            self._watchdog.cancel()
        _call(self.on_state, state)

    def _digit(self, digit: str) -> None:
        log.info("%s received DTMF %s", self.label, digit)
        _call(self.on_dtmf, digit)


def _call(callback: Callable[[Any], None] | None, arg: Any) -> None:
    if callback is None:
        return
    try:
        callback(arg)
    except Exception:
        log.exception("WebRTC leg callback failed")


def _sender_report(sender: RTCRtpSender) -> Callable[[int, int, int], None] | None:
    """Keeps the counts in aiortc's RTCP sender reports true while ``g711_rtp`` sends past
    its sender (private attributes: None, and reports without counts, if they are gone)."""
    prefix = "_RTCRtpSender__"
    names = ("ntp_timestamp", "rtp_timestamp", "packet_count", "octet_count")
    if not all(isinstance(getattr(sender, prefix + n, None), int) for n in names):
        log.warning("aiortc's sender has no report counts to keep; its RTCP reports stay empty")
        return None

    def update(rtp_timestamp: int, packets: int, octets: int) -> None:
        setattr(sender, prefix + "ntp_timestamp", current_ntp_time())
        setattr(sender, prefix + "rtp_timestamp", rtp_timestamp)
        setattr(sender, prefix + "packet_count", packets)
        setattr(sender, prefix + "octet_count", octets)

    return update


def _capabilities(names: Sequence[str]) -> list[RTCRtpCodecCapability]:
    caps = RTCRtpSender.getCapabilities("audio").codecs
    out = []
    for name in names:
        match = next((c for c in caps if c.mimeType.lower() == f"audio/{name.lower()}"), None)
        if match is None:
            known = [c.mimeType.split("/", 1)[1] for c in caps]
            raise ValueError(f"codec {name!r} is not supported by aiortc (supported: {known})")
        if match not in out:
            out.append(match)
    if not out:
        raise ValueError("codec_preference is empty")
    return out


with contextlib.suppress(MediaError):  # fail early, at import, on an unsupported aioice
    ice.install_hook()
