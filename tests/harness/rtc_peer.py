"""An independent WebRTC endpoint for tests, on plain aiortc, behaving on the wire like
Chrome in Element: the other side of the bridge's WebRTC leg.

It imports nothing from ``bridge``: it has its own (small) answers to the three things aiortc
does not do the way a browser does, so that a bug in the bridge's versions cannot hide itself.

- **Loopback only.** aioice leaves 127.0.0.1 out of its host candidates. While this peer
  gathers, a context variable makes ``aioice.ice.get_host_addresses`` (wrapped once, falling
  back to whatever it was before for everyone else) return 127.0.0.1 only.
- **telephone-event.** Offers carry ``telephone-event/48000`` (PT 110) and
  ``telephone-event/8000`` (PT 126) like Chrome's; answers echo the offered one at the audio
  codec's clock rate. Digits are sent the way Chrome sends them: event packets replace audio
  packets on the same SSRC (marker on the first, growing duration, the end packet three
  times), by wrapping the DTLS transport's plain-RTP send method; received event packets are
  taken out before aiortc's router (which would drop them).
- **Rejected m-lines.** aiortc cannot take an answer with a port-0 m-line; such a section is
  turned into an inactive member of the BUNDLE group before aiortc sees it, which is how
  aiortc can live with it (no media, no transport of its own).

Audio: a tone generator track (or silence), paced by the wall clock like a microphone, and a
recorder that keeps what arrives as 16-bit mono PCM at ``record_rate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fractions
import logging
import re
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aioice.ice
import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceCandidate, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import is_rtcp
from aiortc.sdp import candidate_from_sdp

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DTMF_DIGITS = "0123456789*#ABCD"
CHROME_EVENTS = {110: 48000, 126: 8000}

# --- loopback-only gathering ---------------------------------------------------------------
_LOOPBACK_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "rtc_peer_loopback_only", default=False
)


_hook_installed: list[bool] = []


def _install_loopback_hook() -> None:
    if _hook_installed:  # once per process, whoever else wraps the function later
        return
    previous = aioice.ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if _LOOPBACK_ONLY.get():
            return [LOOPBACK]
        return list(previous(use_ipv4, use_ipv6))

    aioice.ice.get_host_addresses = get_host_addresses
    _hook_installed.append(True)


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    _install_loopback_hook()
    token = _LOOPBACK_ONLY.set(True)
    try:
        yield
    finally:
        _LOOPBACK_ONLY.reset(token)


# --- SDP helpers (text level) --------------------------------------------------------------
def sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    media: list[list[str]] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def join(session: list[str], media: list[list[str]]) -> str:
    return "".join(x + "\r\n" for x in session + [line for m in media for line in m])


def candidate_lines(sdp: str) -> list[str]:
    return [line[2:] for line in sdp.replace("\r\n", "\n").split("\n")
            if line.startswith("a=candidate:")]


def candidate_hosts(sdp: str) -> list[str]:
    return [line.split()[4] for line in candidate_lines(sdp)]


def strip_candidates(sdp: str) -> str:
    session, media = sections(sdp)
    media = [[x for x in m if not x.startswith(("a=candidate:", "a=end-of-candidates"))]
             for m in media]
    return join(session, media)


def _attr(lines: list[str], name: str) -> str | None:
    return next((x.split(":", 1)[1] for x in lines if x.startswith(f"a={name}:")), None)


def _rtpmaps(lines: list[str]) -> dict[int, tuple[str, int]]:
    out = {0: ("pcmu", 8000), 8: ("pcma", 8000), 9: ("g722", 8000)}
    for x in lines:
        m = re.match(r"a=rtpmap:(\d+) ([^/]+)/(\d+)", x)
        if m:
            out[int(m.group(1))] = (m.group(2).lower(), int(m.group(3)))
    return out


def _add_events(lines: list[str], events: dict[int, int]) -> list[str]:
    head = lines[0].split()
    head += [str(pt) for pt in events if str(pt) not in head[3:]]
    extra = [f"a=rtpmap:{pt} telephone-event/{rate}" for pt, rate in events.items()]
    return [" ".join(head), *lines[1:], *extra]


def direction_of(lines: list[str]) -> str:
    for x in lines:
        if x in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            return x[2:]
    return "sendrecv"


# --- audio ---------------------------------------------------------------------------------
class ToneTrack(MediaStreamTrack):
    """A microphone playing a sine (or silence), 20 ms frames at 48 kHz, wall-clock paced.

    Frames are stereo (the same signal twice): aiortc's Opus encoder would upmix mono with
    a -3 dB centre gain, which a browser's Opus does not do."""

    kind = "audio"
    RATE = 48000

    def __init__(self) -> None:
        super().__init__()
        self.freq: float | None = None
        self.level_dbfs = -12.0
        self._phase = 0.0
        self._samples = self.RATE // 50
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            delay = self._start + self._pts / self.RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        n = self._samples
        if self.freq:
            amp = 32767.0 * 10 ** (self.level_dbfs / 20)
            step = 2 * np.pi * self.freq / self.RATE
            pcm = np.round(amp * np.sin(self._phase + step * np.arange(n))).astype("<i2")
            self._phase = float((self._phase + step * n) % (2 * np.pi))
        else:
            pcm = np.zeros(n, dtype="<i2")
        frame = av.AudioFrame(format="s16", layout="stereo", samples=n)
        frame.planes[0].update(np.repeat(pcm, 2).tobytes())
        frame.sample_rate = self.RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.RATE)
        self._pts += n
        return frame


class Recorder:
    """Keeps the last ``max_seconds`` of received audio as int16 mono PCM at ``rate``."""

    def __init__(self, rate: int = 8000, max_seconds: float = 60.0) -> None:
        self.rate = rate
        self._pcm = bytearray()
        self._max = int(rate * max_seconds) * 2
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self._task: asyncio.Task[None] | None = None

    def start(self, track: MediaStreamTrack) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                frame.pts = None
                for out in self._resampler.resample(frame):
                    self._pcm += out.to_ndarray().tobytes()
                if len(self._pcm) > self._max:
                    del self._pcm[: len(self._pcm) - self._max]

    def clear(self) -> None:
        self._pcm.clear()

    def take(self) -> bytes:
        data = bytes(self._pcm)
        self._pcm.clear()
        return data

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# --- DTMF on the wire ----------------------------------------------------------------------
class WireDtmf:
    """Chrome-like RFC 4733 sending and receiving on one aiortc DTLS transport."""

    def __init__(self, transport: Any, on_digit: Callable[[str], None]) -> None:
        self.on_digit = on_digit
        self.ssrc = 0
        self.send_events: dict[int, int] = {}
        self.receive_pts: set[int] = set()
        self.clocks: dict[int, int] = {}
        self._queue: deque[tuple[int, int]] = deque()
        self._tone: dict[str, int] | None = None
        self._gap = 0
        self._seq: int | None = None
        self._rx_shift: dict[int, int] = {}
        self._rx_last_ts: dict[int, int] = {}
        self._send: Callable[[bytes], Awaitable[None]] = transport._send_rtp
        self._recv: Callable[..., Awaitable[None]] = transport._handle_rtp_data
        transport._send_rtp = self._on_send
        transport._handle_rtp_data = self._on_recv

    def insert(self, digits: str, duration_ms: int = 100) -> None:
        for d in digits.upper():
            self._queue.append((DTMF_DIGITS.index(d), duration_ms))

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._tone is not None

    async def _out(self, data: bytes) -> None:
        seq = int.from_bytes(data[2:4], "big") if self._seq is None else self._seq
        self._seq = (seq + 1) & 0xFFFF
        await self._send(data[:2] + seq.to_bytes(2, "big") + data[4:])

    async def _on_send(self, data: bytes) -> None:
        if is_rtcp(data) or int.from_bytes(data[8:12], "big") != self.ssrc:
            await self._send(data)
            return
        ts = int.from_bytes(data[4:8], "big")
        if self._tone is None and self._queue and self._gap <= 0:
            rate = self.clocks.get(data[1] & 0x7F, 0)
            pt = next((p for p, r in self.send_events.items() if r == rate), None)
            event, ms = self._queue.popleft()
            if pt is not None:
                self._tone = {"event": event, "pt": pt, "ts": ts, "rate": rate,
                              "target": rate * ms // 1000, "first": 1}
        if self._tone is None:
            self._gap -= 1
            await self._out(data)
            return
        t = self._tone
        duration = min(((ts - t["ts"]) & 0xFFFFFFFF) + t["rate"] // 50, 0xFFFF)
        end = duration >= t["target"]
        hlen = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10:
            hlen += 4 + 4 * int.from_bytes(data[hlen + 2: hlen + 4], "big")
        for _ in range(3 if end else 1):
            header = bytearray(data[:hlen])
            header[0] &= 0xDF
            header[1] = (0x80 if t["first"] else 0) | t["pt"]
            header[4:8] = t["ts"].to_bytes(4, "big")
            t["first"] = 0
            payload = struct.pack("!BBH", t["event"], (0x80 if end else 0) | 10, duration)
            await self._out(bytes(header) + payload)
        if end:
            self._tone = None
            self._gap = 4

    async def _on_recv(self, data: bytes, arrival_time_ms: int) -> None:
        ssrc = int.from_bytes(data[8:12], "big")
        if data[1] & 0x7F in self.receive_pts:
            self._rx_shift[ssrc] = self._rx_shift.get(ssrc, 0) + 1
            hlen = 12 + 4 * (data[0] & 0x0F)
            if data[0] & 0x10:
                hlen += 4 + 4 * int.from_bytes(data[hlen + 2: hlen + 4], "big")
            ts = int.from_bytes(data[4:8], "big")
            if len(data) >= hlen + 4 and self._rx_last_ts.get(ssrc) != ts:
                self._rx_last_ts[ssrc] = ts
                event = data[hlen]
                if event < len(DTMF_DIGITS):
                    self.on_digit(DTMF_DIGITS[event])
            return
        shift = self._rx_shift.get(ssrc, 0)
        if shift:
            seq = (int.from_bytes(data[2:4], "big") - shift) & 0xFFFF
            data = data[:2] + seq.to_bytes(2, "big") + data[4:]
        await self._recv(data, arrival_time_ms=arrival_time_ms)


# --- the peer ------------------------------------------------------------------------------
class RtcPeer:
    """One browser-like WebRTC endpoint: audio (+ optional video), loopback candidates."""

    def __init__(self, *, video: bool = False, codecs: list[str] | None = None,
                 record_rate: int = 8000) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tone = ToneTrack()
        self.recorder = Recorder(record_rate)
        self.received_dtmf: list[str] = []
        self.dtmf_event = asyncio.Event()
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        self.audio = self.pc.addTransceiver(self.tone, direction="sendrecv")
        if codecs:
            from aiortc import RTCRtpSender

            caps = RTCRtpSender.getCapabilities("audio").codecs
            self.audio.setCodecPreferences(
                [c for n in codecs for c in caps if c.mimeType.lower() == f"audio/{n.lower()}"]
            )
        self.video = self.pc.addTransceiver("video", direction="sendrecv") if video else None
        self.dtmf = WireDtmf(self.audio.receiver.transport, self._digit)
        self.pc.on("connectionstatechange", self._on_state)
        self.pc.on("track", self._on_track)
        self._offer_events: dict[int, int] = {}

    def _digit(self, digit: str) -> None:
        self.received_dtmf.append(digit)
        self.dtmf_event.set()

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()
        elif self.pc.connectionState == "failed":
            self.failed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.recorder.start(track)

    @property
    def local_sdp(self) -> str:
        return self.pc.localDescription.sdp

    async def create_offer(self, direction: str | None = None) -> str:
        """An offer with Chrome's two telephone-event formats; candidates included."""
        if direction is not None:
            self.audio.direction = direction
        with loopback_only():
            await self.pc.setLocalDescription(await self.pc.createOffer())
        session, media = sections(self.local_sdp)
        media[0] = _add_events(media[0], CHROME_EVENTS)
        self._offer_events = dict(CHROME_EVENTS)
        return join(session, media)

    async def accept_answer(self, answer: str) -> None:
        session, media = sections(answer)
        bundle = next((i for i, x in enumerate(session) if x.startswith("a=group:BUNDLE")), None)
        for m in media:
            head = m[0].split()
            if head[1] == "0":  # rejected: aiortc only copes with an inactive bundled section
                head[1] = "9"
                m[0] = " ".join(head)
                m[:] = [x for x in m if x not in ("a=sendrecv", "a=sendonly", "a=recvonly")]
                if "a=inactive" not in m:
                    m.append("a=inactive")
                mid = _attr(m, "mid")
                if bundle is not None and mid and mid not in session[bundle].split()[1:]:
                    session[bundle] += f" {mid}"
        await self.pc.setRemoteDescription(RTCSessionDescription(join(session, media), "answer"))
        self._configure(media[0], media[0])

    async def answer(self, offer: str) -> str:
        with loopback_only():
            await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        _, offer_media = sections(offer)
        session, media = sections(self.local_sdp)
        first = media[0][0].split()[3]
        clock = _rtpmaps(media[0]).get(int(first), ("", 0))[1]
        events = {pt: r for pt, (n, r) in _rtpmaps(offer_media[0]).items()
                  if n == "telephone-event" and r == clock}
        media[0] = _add_events(media[0], dict(list(events.items())[:1]))
        self._configure(media[0], offer_media[0])
        return join(session, media)

    def _configure(self, negotiated: list[str], theirs: list[str]) -> None:
        _, ours = sections(self.local_sdp)
        maps = {**_rtpmaps(theirs), **_rtpmaps(negotiated)}
        self.dtmf.clocks = {pt: r for pt, (n, r) in maps.items() if n != "telephone-event"}
        self.dtmf.send_events = {pt: r for pt, (n, r) in _rtpmaps(negotiated).items()
                                 if n == "telephone-event" and str(pt) in negotiated[0].split()}
        self.dtmf.receive_pts = set(self.dtmf.send_events) | set(self._offer_events) | {
            pt for pt, (n, _r) in maps.items() if n == "telephone-event"}
        ssrc = _attr(ours[0], "ssrc")
        self.dtmf.ssrc = int(ssrc.split()[0]) if ssrc else 0

    async def add_candidate(self, candidate: dict[str, Any]) -> None:
        text = candidate.get("candidate", "")
        if not text:
            await self.pc.addIceCandidate(None)
            return
        c: RTCIceCandidate = candidate_from_sdp(text.split(":", 1)[1])
        c.sdpMid = candidate.get("sdpMid")
        c.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await self.pc.addIceCandidate(c)

    def local_candidates(self) -> list[dict[str, Any]]:
        """Candidates of our local description, per m-section, as Chrome reports them."""
        out = []
        _, media = sections(self.local_sdp)
        for index, m in enumerate(media):
            mid = _attr(m, "mid")
            ufrag = _attr(m, "ice-ufrag")
            for x in m:
                if x.startswith("a=candidate:"):
                    out.append({"candidate": x[2:], "sdpMid": mid, "sdpMLineIndex": index,
                                "usernameFragment": ufrag})
        return out

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        self.dtmf.insert(digits, duration_ms)

    async def close(self) -> None:
        await self.recorder.stop()
        await self.pc.close()
