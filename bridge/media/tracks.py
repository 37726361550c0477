"""20 ms PCM frames in and out of aiortc tracks.

Frames are signed 16-bit little-endian mono PCM at the leg's clock rate (8000 or 16000 Hz:
320 or 640 bytes). Both directions have a bounded buffer that drops the oldest frame when
full, and both fall back to silence when nothing arrives within ``wait`` seconds (60 ms), so
the side that writes (pjmedia's clock in the worker) paces the audio (DESIGN §3a). aiortc's
encoders resample what they are given to the codec's rate; what its decoders yield is
resampled here with :class:`av.AudioResampler` when it is not already at the clock rate.

G.711 at 8 kHz is encoded here, by table, and handed to aiortc as encoded packets: aiortc
encodes frames in its thread pool, and for G.711 the hop to a thread and back (two loop
wake-ups and a GIL hand-off per frame) and its resampler cost far more than the encoding.
The tables are made once from the same FFmpeg encoders aiortc would use, so the bytes on
the wire are the same. The receiving side does the same the other way (``fast_receive.py``):
G.711 payloads are decoded by table in the loop and fed here as PCM.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from collections import deque
from collections.abc import Callable
from typing import Literal

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

log = logging.getLogger(__name__)

FRAME_MS = 20
DEFAULT_WAIT = 0.060
DEFAULT_DEPTH = 10


def frame_bytes(rate: int) -> int:
    return rate * FRAME_MS // 1000 * 2


G711 = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}
_g711_tables: dict[tuple[str, str], np.ndarray] = {}


def _g711_codec(encoding: str, mode: Literal["r", "w"]) -> av.AudioCodecContext:
    ctx = av.CodecContext.create(G711[encoding], mode)
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.layout = "mono"
    ctx.sample_rate = 8000
    if mode == "w":
        ctx.format = "s16"
        ctx.time_base = fractions.Fraction(1, 8000)
    return ctx


def _build_encode_table(encoding: str) -> np.ndarray:
    ctx = _g711_codec(encoding, "w")
    frame = av.AudioFrame(format="s16", layout="mono", samples=65536)
    frame.planes[0].update(np.arange(65536, dtype=np.uint16).tobytes())
    frame.sample_rate = 8000
    frame.pts = 0
    frame.time_base = ctx.time_base
    packets = [*ctx.encode(frame), *ctx.encode(None)]
    return np.frombuffer(b"".join(bytes(p) for p in packets), dtype=np.uint8)


def _build_decode_table(encoding: str) -> np.ndarray:
    frames = _g711_codec(encoding, "r").decode(av.Packet(bytes(range(256))))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype("<i2")


def _g711(encoding: str, direction: str) -> np.ndarray:
    table = _g711_tables.get((encoding, direction))
    if table is None:
        build, size = ((_build_encode_table, 65536) if direction == "encode"
                       else (_build_decode_table, 256))
        table = build(encoding)
        if table.size != size:
            raise RuntimeError(f"{G711[encoding]} {direction}: {table.size} values, not {size}")
        _g711_tables[(encoding, direction)] = table
    return table


def g711_table(encoding: str) -> np.ndarray:
    """Encoded byte for every 16-bit sample, indexed by the sample's bits as uint16; made
    with the FFmpeg encoder aiortc would use."""
    return _g711(encoding, "encode")


def g711_decode_table(encoding: str) -> np.ndarray:
    """The 16-bit sample for every encoded byte, from the FFmpeg decoder aiortc would use."""
    return _g711(encoding, "decode")


class OutgoingTrack(MediaStreamTrack):
    """The audio we send: frames given to :meth:`push`, silence when none comes in time.

    While frames keep coming, :meth:`recv` waits up to ``wait`` for the next one (the writer
    paces the stream); after an underrun it sends silence every 20 ms until frames come back.

    ``stereo``: hand aiortc the mono signal on both channels. Its Opus encoder upmixes mono
    to stereo with libswresample's centre gain (-3 dB); frames that are already stereo keep
    their level (set for Opus; the G.711/G.722 encoders downmix back to mono unchanged).

    ``encoding`` ("pcmu" or "pcma", 8 kHz only): yield encoded packets instead of frames
    (module docstring). aiortc then sends no audio-level header extension.
    """

    kind = "audio"

    def __init__(self, rate: int, depth: int = DEFAULT_DEPTH, wait: float = DEFAULT_WAIT) -> None:
        super().__init__()
        self.rate = rate
        self.samples = rate * FRAME_MS // 1000
        self.size = self.samples * 2
        self.wait = wait
        self.stereo = False
        self._encoding: str | None = None
        self._table: np.ndarray | None = None
        self.dropped = 0
        self.underruns = 0
        self._silence = bytes(self.size)
        self._queue: deque[bytes] = deque(maxlen=depth)
        self._ready = asyncio.Event()
        self._live = False
        self._pts = 0
        self._time_base = fractions.Fraction(1, rate)

    @property
    def encoding(self) -> str | None:
        return self._encoding if self._table is not None else None

    @encoding.setter
    def encoding(self, name: str | None) -> None:
        if name is not None and (name not in G711 or self.rate != 8000):
            name = None
        self._encoding = name
        self._table = g711_table(name) if name is not None else None

    def push(self, frame: bytes) -> None:
        if len(frame) != self.size:
            raise ValueError(f"frame is {len(frame)} bytes; 20 ms at {self.rate} Hz is {self.size}")
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(bytes(frame))
        self._ready.set()

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._queue:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.wait if self._live else FRAME_MS / 1000):
                    await self._ready.wait()
        if self._queue:
            data = self._queue.popleft()
            self._live = True
        else:
            data = self._silence
            if self._live:
                self.underruns += 1
            self._live = False
        table = self._table
        if table is not None:
            packet = av.Packet(table[np.frombuffer(data, dtype="<u2")].tobytes())
            packet.pts = self._pts
            packet.time_base = self._time_base
            self._pts += self.samples
            return packet
        if self.stereo:
            data = np.repeat(np.frombuffer(data, dtype="<i2"), 2).tobytes()
        layout = "stereo" if self.stereo else "mono"
        frame = av.AudioFrame(format="s16", layout=layout, samples=self.samples)
        frame.planes[0].update(data)
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += self.samples
        return frame


class IncomingAudio:
    """The audio we receive, re-cut into 20 ms frames at ``rate`` in a bounded buffer."""

    def __init__(self, rate: int, depth: int = DEFAULT_DEPTH, wait: float = DEFAULT_WAIT) -> None:
        self.rate = rate
        self.size = frame_bytes(rate)
        self.wait = wait
        self.frames = 0
        self.dropped = 0
        self.underruns = 0
        self._silence = bytes(self.size)
        self._queue: deque[bytes] = deque(maxlen=depth)
        self._ready = asyncio.Event()
        self._pending = bytearray()
        self._resampler: av.AudioResampler | None = None
        self._resampler_key: tuple[str, str, int] | None = None
        self._task: asyncio.Task[None] | None = None
        #: when set, each 20 ms frame goes straight here instead of the read buffer.
        self.forward: Callable[[bytes], None] | None = None

    def start(self, track: MediaStreamTrack) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(track), name="webrtc-audio-in")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    self.feed(frame)
        except MediaStreamError:
            log.debug("incoming audio track ended")

    def feed_pcm(self, pcm: bytes) -> None:
        """Samples already at this rate (s16 mono), from the loop's own G.711 decoding."""
        self._pending += pcm
        self._cut()

    def feed(self, frame: av.AudioFrame) -> None:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key == ("s16", "mono", self.rate):
            self._pending += frame.to_ndarray().tobytes()
        else:
            if key != self._resampler_key:
                self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
                self._resampler_key = key
            assert self._resampler is not None
            frame.pts = None
            for out in self._resampler.resample(frame):
                self._pending += out.to_ndarray().tobytes()
        self._cut()

    def _cut(self) -> None:
        forward = self.forward
        while len(self._pending) >= self.size:
            frame = bytes(self._pending[: self.size])
            del self._pending[: self.size]
            self.frames += 1
            if forward is not None:
                forward(frame)
                continue
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append(frame)
        if forward is None:
            self._ready.set()

    def read_nowait(self) -> bytes | None:
        return self._queue.popleft() if self._queue else None

    async def read(self) -> bytes:
        if not self._queue:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.wait):
                    await self._ready.wait()
        if self._queue:
            return self._queue.popleft()
        self.underruns += 1
        return self._silence
