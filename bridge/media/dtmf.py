"""RFC 4733 DTMF (``telephone-event``) on an aiortc leg.

aiortc 1.16 neither negotiates ``telephone-event`` nor sends or receives it: its receiver
drops packets of payload types it did not negotiate, and its sender owns the RTP sequence
numbers of the audio stream. :class:`RtpDtmf` therefore works on the plain (not yet
encrypted / already decrypted) RTP of the leg's :class:`aiortc.RTCDtlsTransport`, by wrapping
two of that object's methods on the instance:

- ``_send_rtp(data)``: every outgoing RTP packet of our audio SSRC passes through. While a
  digit is being sent, each audio packet is replaced by an event packet on the same SSRC,
  the event's RTP timestamp being the timestamp of the first audio packet it replaced and its
  duration growing by one packet time per packet; the end packet is sent three times. This is
  what Chrome does (no audio during an event). Sequence numbers are renumbered so that the
  stream the peer sees stays contiguous.
- ``_handle_rtp_data(data, arrival_time_ms)``: incoming event packets (payload types from the
  SDP) are taken out and reported once per event; the sequence numbers of the audio that
  follows are shifted down by the number of event packets taken out, so aiortc's jitter
  buffer sees no gap (it would otherwise stall for 16 packets after every digit).

Both are private aiortc methods: :meth:`RtpDtmf.install` checks their signatures and raises
:class:`~bridge.media.errors.MediaError` if they changed, and the leg then runs without DTMF
(and says so: ``dtmf_supported`` is False, so the bridge does not advertise
``m.call.dtmf``).
"""

from __future__ import annotations

import inspect
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import is_rtcp

from bridge.media.errors import DtmfError, MediaError

log = logging.getLogger(__name__)

DIGITS = "0123456789*#ABCD"
MIN_DURATION_MS = 40
MAX_DURATION_MS = 6000
END_REPEATS = 3
PTIME_MS = 20
VOLUME = 10  # -10 dBm0, what Chrome sends


def encode_event(event: int, end: bool, volume: int, duration: int) -> bytes:
    return struct.pack("!BBH", event, (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


def decode_event(payload: bytes) -> tuple[int, bool, int, int]:
    """(event, end, volume, duration) of an RFC 4733 payload."""
    if len(payload) < 4:
        raise ValueError("telephone-event payload shorter than 4 bytes")
    event, flags, duration = struct.unpack("!BBH", payload[:4])
    return event, bool(flags & 0x80), flags & 0x3F, duration


def event_of(digit: str) -> int:
    d = digit.upper()
    if len(d) != 1 or d not in DIGITS:
        raise DtmfError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")
    return DIGITS.index(d)


def header_length(data: bytes) -> int | None:
    """Length of an RTP header with CSRCs and extension, None if ``data`` is no RTP."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    n = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < n + 4:
            return None
        n += 4 + 4 * int.from_bytes(data[n + 2 : n + 4], "big")
    return n if n <= len(data) else None


def rtp_payload(data: bytes) -> bytes | None:
    n = header_length(data)
    if n is None:
        return None
    end = len(data) - (data[-1] if data[0] & 0x20 else 0)
    return data[n:end] if end >= n else None


def _with_seq(data: bytes, seq: int) -> bytes:
    return data[:2] + (seq & 0xFFFF).to_bytes(2, "big") + data[4:]


@dataclass
class _Tone:
    event: int
    duration_ms: int
    gap_ms: int


@dataclass
class _Active:
    tone: _Tone
    pt: int
    rate: int
    timestamp: int
    started: bool = False


SendRtp = Callable[[bytes], Awaitable[None]]
HandleRtp = Callable[..., Awaitable[None]]


class RtpDtmf:
    """RFC 4733 sender and receiver on one DTLS transport (see the module docstring)."""

    def __init__(self, on_digit: Callable[[str], None]) -> None:
        self.on_digit = on_digit
        self.installed = False
        self.ssrc: int | None = None
        #: telephone-event payload type → clock rate we may send with / accept
        self.send_events: dict[int, int] = {}
        self.receive_pts: set[int] = set()
        #: audio payload type → RTP clock rate of the codecs we may send
        self.audio_clocks: dict[int, int] = {}
        self.rtp_sent = 0
        self.rtp_received = 0
        self.events_sent = 0
        self.events_received = 0
        self._queue: deque[_Tone] = deque()
        self._active: _Active | None = None
        self._gap_packets = 0
        self._tx_seq: int | None = None
        self._rx_shift: dict[int, int] = {}
        self._rx_last: dict[int, tuple[int, int, bool, int]] = {}
        self._send_rtp: SendRtp | None = None
        self._handle_rtp: HandleRtp | None = None

    # --- set-up ------------------------------------------------------------------------
    def install(self, transport: RTCDtlsTransport) -> None:
        """Wrap the transport's RTP send and receive paths (once)."""
        if self.installed:
            return
        _check_signature(RTCDtlsTransport, "_send_rtp", ["self", "data"])
        _check_signature(RTCDtlsTransport, "_handle_rtp_data", ["self", "data", "arrival_time_ms"])
        self._send_rtp = transport._send_rtp
        self._handle_rtp = transport._handle_rtp_data
        setattr(transport, "_send_rtp", self._on_send)  # noqa: B010
        setattr(transport, "_handle_rtp_data", self._on_receive)  # noqa: B010
        self.installed = True

    @property
    def downstream(self) -> HandleRtp:
        """Where this hook passes received audio on: aiortc's own handler, unless replaced
        (``g711_rtp``)."""
        assert self._handle_rtp is not None, "install() first"
        return self._handle_rtp

    @downstream.setter
    def downstream(self, handler: HandleRtp) -> None:
        self._handle_rtp = handler

    def configure(
        self,
        *,
        ssrc: int,
        send_events: dict[int, int],
        receive_pts: set[int],
        audio_clocks: dict[int, int],
    ) -> None:
        self.ssrc = ssrc
        self.send_events = dict(send_events)
        self.receive_pts = set(receive_pts)
        self.audio_clocks = dict(audio_clocks)

    def can_send(self, clock_rate: int) -> bool:
        return self.installed and clock_rate in self.send_events.values()

    def queue(self, digits: str, duration_ms: int = 100, gap_ms: int = 70) -> None:
        if not MIN_DURATION_MS <= duration_ms <= MAX_DURATION_MS:
            raise DtmfError(
                f"DTMF duration {duration_ms} ms is outside {MIN_DURATION_MS}-{MAX_DURATION_MS} ms"
            )
        tones = [_Tone(event_of(d), duration_ms, max(gap_ms, 30)) for d in digits]
        if not tones:
            raise DtmfError("no DTMF digits given")
        self._queue.extend(tones)

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._active is not None

    # --- sending -----------------------------------------------------------------------
    async def _on_send(self, data: bytes) -> None:
        assert self._send_rtp is not None
        if len(data) < 12 or is_rtcp(data) or int.from_bytes(data[8:12], "big") != self.ssrc:
            await self._send_rtp(data)
            return
        if self._active is None and self._queue and self._gap_packets <= 0:
            self._start_tone(data)
        if self._active is not None:
            await self._send_event(data)
            return
        if self._gap_packets > 0:
            self._gap_packets -= 1
        await self._forward(data)

    async def _forward(self, data: bytes) -> None:
        assert self._send_rtp is not None
        seq = int.from_bytes(data[2:4], "big") if self._tx_seq is None else self._tx_seq
        self._tx_seq = (seq + 1) & 0xFFFF
        self.rtp_sent += 1
        await self._send_rtp(_with_seq(data, seq))

    def _start_tone(self, audio: bytes) -> None:
        rate = self.audio_clocks.get(audio[1] & 0x7F)
        pt = next((p for p, r in self.send_events.items() if r == rate), None)
        tone = self._queue.popleft()
        if rate is None or pt is None:
            log.warning("DTMF %s dropped: no telephone-event for the codec's clock", tone.event)
            return
        timestamp = int.from_bytes(audio[4:8], "big")
        self._active = _Active(tone, pt, rate, timestamp)

    async def _send_event(self, audio: bytes) -> None:
        active = self._active
        assert active is not None
        ptime = active.rate * PTIME_MS // 1000
        elapsed = (int.from_bytes(audio[4:8], "big") - active.timestamp) & 0xFFFFFFFF
        duration = min(elapsed + ptime, 0xFFFF)
        target = active.rate * active.tone.duration_ms // 1000
        end = duration >= target
        repeats = END_REPEATS if end else 1
        for _ in range(repeats):
            marker = not active.started
            active.started = True
            await self._forward(self._event_packet(audio, active, marker, end, duration))
        if end:
            self.events_sent += 1
            self._active = None
            self._gap_packets = -(-active.tone.gap_ms // PTIME_MS)

    @staticmethod
    def _event_packet(audio: bytes, active: _Active, marker: bool, end: bool, dur: int) -> bytes:
        n = header_length(audio) or 12
        header = bytearray(audio[:n])
        header[0] &= ~0x20 & 0xFF  # no padding
        header[1] = (0x80 if marker else 0) | active.pt
        header[4:8] = active.timestamp.to_bytes(4, "big")
        return bytes(header) + encode_event(active.tone.event, end, VOLUME, dur)

    # --- receiving ---------------------------------------------------------------------
    async def _on_receive(self, data: bytes, arrival_time_ms: int) -> None:
        assert self._handle_rtp is not None
        if len(data) >= 12:
            ssrc = int.from_bytes(data[8:12], "big")
            if data[1] & 0x7F in self.receive_pts:
                self._rx_shift[ssrc] = self._rx_shift.get(ssrc, 0) + 1
                self._on_event_packet(ssrc, data)
                return
            self.rtp_received += 1
            shift = self._rx_shift.get(ssrc)
            if shift:
                data = _with_seq(data, int.from_bytes(data[2:4], "big") - shift)
        await self._handle_rtp(data, arrival_time_ms=arrival_time_ms)

    def _on_event_packet(self, ssrc: int, data: bytes) -> None:
        payload = rtp_payload(data)
        try:
            event, end, _volume, duration = decode_event(payload or b"")
        except ValueError:
            return
        timestamp = int.from_bytes(data[4:8], "big")
        last = self._rx_last.get(ssrc)
        self._rx_last[ssrc] = (timestamp, event, end, duration)
        if last is not None and last[0] == timestamp:
            return
        if last is not None and last[1] == event and not last[2]:
            # a long event continues in a new segment (RFC 4733 section 2.5.1.3)
            if (timestamp - last[0]) & 0xFFFFFFFF == last[3]:
                return
        if event < len(DIGITS):
            self.events_received += 1
            try:
                self.on_digit(DIGITS[event])
            except Exception:
                log.exception("DTMF callback failed")


def _check_signature(cls: type[Any], name: str, params: list[str]) -> None:
    func = getattr(cls, name, None)
    if func is None or not inspect.iscoroutinefunction(func):
        raise MediaError(f"aiortc {cls.__name__}.{name} is missing: DTMF hook unsupported")
    found = list(inspect.signature(func).parameters)
    if found != params:
        raise MediaError(f"aiortc {cls.__name__}.{name}{found} changed: DTMF hook unsupported")
