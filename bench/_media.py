"""What the call benchmark sends and how it measures what arrives (shared by every process of
``bench/calls.py``: the callers, the PBX side and the aiortc baseline peers).

**Signal.** Each direction carries its own signal, never an echo: silence, then a *window* of
``seconds`` of a 1000 Hz tone at -20 dBFS with a 100 ms burst at -3 dBFS every second (at
0.25 s, 1.25 s, ... into the window), then silence again. The callers' window starts at
``t0``, the PBX side's at ``t0 + LEAD`` (so that it knows every call's RTP address by then).

**Timing.** Every process uses ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for the whole
machine). Every stream sends 20 ms packets on the grid ``t_ref + n * 20 ms + phase`` (phase
0-19 ms, spread over the streams as real calls would be); the window starts on that grid, so
a stream sends exactly ``seconds * 50`` tone packets, and the burst onsets leave the sender
at known times ``window + 0.25 + k`` (sample-exact). A receiver notes the arrival time of each
packet (or decoded frame); the first sample above half the burst level after a quiet spell
is an onset at ``arrival + index / 8000``. ``onset - burst time`` is the one-way delay of that
burst. The sender's lateness against the grid is recorded too (a saturated sender shows).

**Counting.** A received 20 ms frame is a tone frame when at least half of its samples
exceed 30 % of the tone's amplitude (silence, underrun fill and lost frames do not); loss is
``1 - tone frames received / (seconds * 50)``. Jitter is RFC 3550's interarrival jitter
from arrival times and RTP timestamps (frame indices for decoded frames).
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.media import tone

RATE = 8000
SPF = 160  # samples per 20 ms frame
FRAME_S = 0.02
TONE_HZ = 1000.0
BASE_DBFS = -20.0
BURST_DBFS = -3.0
BURST_S = 0.1
BURST_AT = 0.25  # first burst, seconds into the window; then every PERIOD_S
PERIOD_S = 1.0
LEAD = 0.5  # the PBX side's window starts this much after the callers'
QUIET_S = 0.3  # a burst onset needs this much quiet before it

_FULL = 32767.0
BASE_AMP = _FULL * 10 ** (BASE_DBFS / 20)
BURST_AMP = _FULL * 10 ** (BURST_DBFS / 20)
TONE_T = 0.3 * BASE_AMP
LOUD_T = 0.5 * BURST_AMP

ULAW_SILENCE = b"\xff" * SPF
PCM_SILENCE = bytes(2 * SPF)

_ULAW_PCM = np.frombuffer(tone.ulaw_to_pcm(bytes(range(256))), dtype="<i2").astype(np.int32)
#: bytes.translate tables: µ-law byte -> 1 when the sample is above a threshold, else 0
TONE_MAP = bytes(1 if abs(v) >= TONE_T else 0 for v in _ULAW_PCM)
LOUD_MAP = bytes(1 if abs(v) >= LOUD_T else 0 for v in _ULAW_PCM)


def signal_pcm(seconds: float) -> np.ndarray:
    """The window's samples (int16), one frame longer than the window (phase shift)."""
    n = round(seconds * RATE) + SPF
    amp = np.full(n, BASE_AMP)
    k = 0
    while (start := round((BURST_AT + k * PERIOD_S) * RATE)) < n:
        amp[start:start + round(BURST_S * RATE)] = BURST_AMP
        k += 1
    t = np.arange(n, dtype=np.float64)
    return np.round(amp * np.sin(2 * np.pi * TONE_HZ * t / RATE)).astype("<i2")


def signal_ulaw(seconds: float) -> bytes:
    return tone.pcm_to_ulaw(signal_pcm(seconds).tobytes())


def burst_times(window: float, seconds: float) -> list[float]:
    return [window + BURST_AT + k * PERIOD_S for k in range(math.ceil(seconds - BURST_AT))]


def quantiles(values: Iterable[float], *qs: float) -> list[float | None]:
    v = sorted(values)
    if not v:
        return [None for _ in qs]
    return [v[min(len(v) - 1, round(q * (len(v) - 1)))] for q in qs]


def summary(values: Iterable[float], digits: int = 1) -> dict[str, float | None]:
    med, p95 = quantiles(values, 0.5, 0.95)
    return {"median": None if med is None else round(med, digits),
            "p95": None if p95 is None else round(p95, digits)}


# --- sending ------------------------------------------------------------------------------
class ToneSource:
    """What one stream sends in 20 ms packet ``n`` of the grid (µ-law or int16 PCM)."""

    def __init__(self, t_ref: float, phase_ms: int, pcm: bool = False) -> None:
        self.t_ref = t_ref
        self.phase = phase_ms * RATE // 1000  # in samples
        self.pcm = pcm
        self.silence = PCM_SILENCE if pcm else ULAW_SILENCE
        self._signal = b""
        self._first = 0  # grid sample index where the window starts
        self._end = 0
        self.sent_tone = 0

    def due(self, n: int) -> float:
        return self.t_ref + n * FRAME_S + self.phase / RATE

    def set_window(self, window: float, seconds: float, signal: bytes) -> None:
        self._signal = signal
        self._first = round((window - self.t_ref) * RATE)
        self._end = self._first + round(seconds * RATE)

    def payload(self, n: int) -> bytes:
        g = n * SPF + self.phase
        if not self._signal or not self._first <= g < self._end:
            return self.silence
        self.sent_tone += 1
        i = g - self._first
        if self.pcm:
            return self._signal[2 * i: 2 * (i + SPF)]
        return self._signal[i: i + SPF]


class Ticker:
    """Calls ``send(n)`` for every stream at its grid times, from one asyncio task; never
    skips a packet, records how late each send was."""

    def __init__(self, t_ref: float) -> None:
        self.t_ref = t_ref
        self.streams: dict[int, list[tuple[ToneSource, Callable[[int], Any]]]] = {}
        self.late: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self.record_late = False

    def add(self, source: ToneSource, send: Callable[[int], Any]) -> None:
        self.streams.setdefault(source.phase, []).append((source, send))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, source: ToneSource) -> None:
        group = self.streams.get(source.phase, [])
        group[:] = [(s, f) for s, f in group if s is not source]

    async def _run(self) -> None:
        n = math.ceil((time.monotonic() - self.t_ref) / FRAME_S) + 1
        while True:
            for phase in sorted(self.streams):
                group = self.streams[phase]
                if not group:
                    continue
                due = self.t_ref + n * FRAME_S + phase / RATE
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.record_late:
                    self.late.append(time.monotonic() - due)
                for _source, send in list(group):
                    try:
                        r = send(n)
                        if asyncio.iscoroutine(r):
                            await r
                    except Exception:
                        continue
            n += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None


_RTP = struct.Struct("!BBHII")


def rtp_packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return _RTP.pack(0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF,
                     ssrc) + payload


def rtp_parse(data: bytes) -> tuple[int, int, int, int, bytes] | None:
    """(payload type, seq, timestamp, ssrc, payload) of a plain RTP packet."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    hlen = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < hlen + 4:
            return None
        hlen += 4 + 4 * int.from_bytes(data[hlen + 2: hlen + 4], "big")
    end = len(data)
    if data[0] & 0x20 and end > hlen:
        end -= data[-1]
    _b0, b1, seq, ts, ssrc = _RTP.unpack_from(data)
    return b1 & 0x7F, seq, ts, ssrc, data[hlen:end]


# --- receiving ----------------------------------------------------------------------------
@dataclass
class Meter:
    """What one receiver saw of one stream."""

    packets: int = 0
    tone_frames: int = 0
    onsets: list[float] = field(default_factory=list)
    _jitter: float = 0.0
    _transit: float | None = None
    _last_loud: float = -1e9
    _frame_index: int = 0

    def ulaw(self, arrival: float, rtp_ts: int, payload: bytes) -> None:
        self.packets += 1
        self._jitter_update(arrival, rtp_ts)
        n = len(payload)
        if payload.translate(TONE_MAP).count(1) * 2 >= n:
            self.tone_frames += 1
        loud = payload.translate(LOUD_MAP).find(1)
        if loud >= 0:
            t = arrival + loud / RATE
            if t - self._last_loud > QUIET_S:
                self.onsets.append(t)
            self._last_loud = arrival + n / RATE

    def pcm(self, arrival: float, frame: bytes) -> None:
        """A decoded 20 ms frame (int16 mono at 8 kHz)."""
        self.packets += 1
        self._jitter_update(arrival, self._frame_index * SPF)
        self._frame_index += 1
        x = np.abs(np.frombuffer(frame, dtype="<i2").astype(np.int32))
        if np.count_nonzero(x >= TONE_T) * 2 >= len(x):
            self.tone_frames += 1
        loud = np.flatnonzero(x >= LOUD_T)
        if loud.size:
            t = arrival + int(loud[0]) / RATE
            if t - self._last_loud > QUIET_S:
                self.onsets.append(t)
            self._last_loud = arrival + len(x) / RATE

    def _jitter_update(self, arrival: float, rtp_ts: int) -> None:
        transit = arrival * RATE - rtp_ts
        if self._transit is not None:
            d = transit - self._transit
            # timestamps wrap at 2**32: a jump that large is a wrap, not jitter
            if abs(d) < 2**31:
                self._jitter += (abs(d) - self._jitter) / 16
        self._transit = transit

    def report(self) -> dict[str, Any]:
        return {"packets": self.packets, "tone_frames": self.tone_frames,
                "jitter_ms": round(self._jitter / RATE * 1000, 3),
                "onsets": [round(t, 6) for t in self.onsets]}


def delays_ms(onsets: Iterable[float], window: float, seconds: float) -> list[float]:
    """One-way delays of the bursts sent at ``window + BURST_AT + k`` (k whole seconds)."""
    sent = burst_times(window, seconds)
    out = []
    for t in onsets:
        k = math.floor((t - window - BURST_AT) / PERIOD_S)
        if 0 <= k < len(sent):
            out.append((t - sent[k]) * 1000)
    return out
