"""Call audio inside a worker: a fixed pool of AudioMediaPorts and per-call frame buffers.

Three threads meet here:

* pjmedia's clock thread calls :class:`FramePort`'s frame callbacks every 20 ms;
* the pjsua2 owner thread creates the ports at start, connects a port to a call's media and
  frees the slot when the call ends (:class:`AudioPool`);
* the asyncio thread reads and writes frames through :class:`CallAudio`.

The only state the threads share is :class:`FrameBuffers`, pure Python (deque append/popleft
and attribute swaps are atomic under the GIL). No pjsua2 object ever reaches the asyncio
thread. Ports are created once and never deleted while the clock runs (DESIGN §3a): a free
slot's port is simply not connected to anything.

Buffers (measured in the prototype, DESIGN §3a): towards SIP, a deque primed with one frame
of slack, one frame dropped when it holds more than 3, at most 10, re-primed after an
underrun (silence meanwhile). From SIP, frames are handed to the loop only while someone
listens, into a bounded deque (oldest dropped), through one :class:`LoopHandOff` per worker:
the clock thread serves every port in one tick, so the frames of all calls of that tick wake
the loop once (``call_soon_threadsafe`` per frame woke it once per call and frame).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import pjsua2 as pj

from .framecopy import FrameCopy
from .threadstate import keep_thread_state

log = logging.getLogger(__name__)

TX_MAX = 10
TX_HIGH = 3
TX_PREFILL = 1
RX_MAX = 10


class AudioClosed(Exception):
    """The call's audio ended (call over, or worker stopping)."""


class LoopHandOff:
    """Calls ``sink(data)`` in the loop for frames given from another thread, waking the
    loop once for everything given before it runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[Callable[[bytes], None], bytes]] = deque()
        self._scheduled = False
        self.wakeups = 0

    # -- clock thread
    def give(self, sink: Callable[[bytes], None], data: bytes) -> None:
        self._items.append((sink, data))
        if not self._scheduled:
            self._scheduled = True
            self.wakeups += 1
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: the worker is stopping
                self._scheduled = False

    # -- asyncio thread
    def _drain(self) -> None:
        self._scheduled = False  # before draining: a frame given meanwhile schedules again
        items = self._items
        while items:
            sink, data = items.popleft()
            try:
                sink(data)
            except Exception:
                log.exception("audio frame sink failed")


class FrameBuffers:
    """What the clock thread and the asyncio thread share for one slot."""

    def __init__(self, slot: int, frame_bytes: int, hand_off: LoopHandOff) -> None:
        self.slot = slot
        self.frame_bytes = frame_bytes
        self.silence = bytes(frame_bytes)
        self._hand_off = hand_off
        self._tx: deque[bytes] = deque()
        self._primed = False
        self.tone: tuple[bytes, ...] | None = None
        self._tone_pos = 0
        #: set by the asyncio side while it wants incoming frames.
        self.rx_sink: Callable[[bytes], None] | None = None
        self.rx_frames = 0
        self.tx_frames = 0
        self.tx_underruns = 0
        self.tx_dropped = 0

    # -- clock thread
    def next_tx(self) -> bytes:
        tone = self.tone
        if tone:
            frame = tone[self._tone_pos % len(tone)]
            self._tone_pos += 1
            return frame
        q = self._tx
        if not self._primed:
            if len(q) <= TX_PREFILL:
                return self.silence
            self._primed = True
        if len(q) > TX_HIGH:
            q.popleft()
            self.tx_dropped += 1
        if q:
            self.tx_frames += 1
            return q.popleft()
        self._primed = False
        self.tx_underruns += 1
        return self.silence

    def on_rx(self, data: bytes) -> None:
        self.rx_frames += 1
        sink = self.rx_sink
        if sink is not None:
            self._hand_off.give(sink, data)

    # -- asyncio thread
    def push_tx(self, frame: bytes) -> None:
        q = self._tx
        if len(q) >= TX_MAX:
            q.popleft()
            self.tx_dropped += 1
        q.append(frame)

    # -- owner thread, when a slot changes hands
    def reset(self) -> None:
        self.rx_sink = None
        self.tone = None
        self._tone_pos = 0
        self._tx.clear()
        self._primed = False


class FramePort(pj.AudioMediaPort):
    """One conference port; its callbacks run in the clock thread and never raise."""

    def __init__(self, buffers: FrameBuffers, copy: FrameCopy) -> None:
        super().__init__()
        self._buffers = buffers
        self._copy = copy

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        try:
            keep_thread_state()
            self._copy.write(frame, self._buffers.next_tx())
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        except Exception:  # noqa: S110 - nothing may escape into pjsua2
            pass

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        try:
            keep_thread_state()
            if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
                data = self._copy.read(frame)
                if data:
                    self._buffers.on_rx(data)
        except Exception:  # noqa: S110
            pass


class AudioPool:
    """The worker's AudioMediaPorts, one per call slot, for the whole process (owner thread)."""

    def __init__(
        self, size: int, clock_rate: int, copy: FrameCopy, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.clock_rate = clock_rate
        self.frame_bytes = clock_rate // 50 * 2
        self.hand_off = LoopHandOff(loop)
        self.buffers = [FrameBuffers(i, self.frame_bytes, self.hand_off) for i in range(size)]
        self._copy = copy
        self._ports: list[FramePort] = []
        self._free: list[int] = list(range(size))

    def create_ports(self) -> None:
        """After ``libStart``, in the owner thread."""
        fmt = pj.MediaFormatAudio()
        fmt.init(pj.PJMEDIA_FORMAT_PCM, self.clock_rate, 1, 20000, 16)
        for buf in self.buffers:
            port = FramePort(buf, self._copy)
            port.createPort(f"bridge-slot{buf.slot}", fmt)
            self._ports.append(port)

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self) -> int | None:
        if not self._free:
            return None
        slot = self._free.pop(0)
        self.buffers[slot].reset()
        return slot

    def release(self, slot: int) -> None:
        self.buffers[slot].reset()
        if slot not in self._free:
            self._free.append(slot)

    def connect(self, slot: int, media: pj.AudioMedia) -> None:
        port = self._ports[slot]
        media.startTransmit(port)
        port.startTransmit(media)

    def destroy(self) -> None:
        """Only after the clock is stopped (``audDevManager().setNoDev()``)."""
        while self._ports:
            port = self._ports.pop()
            del port


class CallAudio:
    """One call's audio as the asyncio side sees it: 20 ms signed 16-bit mono PCM frames.

    ``read()`` yields frames received from SIP (waiting for the next one), ``write()`` queues
    a frame to send (exactly ``frame_bytes`` long). Both raise :class:`AudioClosed` once the
    call is over. A WebRTC leg pumps through this same interface.
    """

    def __init__(self, call_id: str, buffers: FrameBuffers, rate: int) -> None:
        self.call_id = call_id
        self.rate = rate
        self.frame_bytes = buffers.frame_bytes
        self._buffers = buffers
        self._rx: deque[bytes] = deque(maxlen=RX_MAX)
        self._waiter: asyncio.Future[None] | None = None
        self._probes: list[tuple[list[bytes], int, asyncio.Future[bytes]]] = []
        self._reading = False
        self._forward: Callable[[bytes], None] | None = None
        self.closed = False
        #: frames from SIP handed to ``read`` (delivered) and dropped because nobody read
        #: them in time; frames towards SIP are counted in the slot's buffers (from here on).
        self.rx_delivered = 0
        self.rx_dropped = 0
        self._tx_start = (buffers.tx_frames, buffers.tx_dropped, buffers.tx_underruns)

    def tx_counts(self) -> tuple[int, int]:
        """(frames sent to SIP, frames lost towards SIP: dropped or underrun) since the start."""
        b, (frames, dropped, underruns) = self._buffers, self._tx_start
        return (b.tx_frames - frames,
                b.tx_dropped - dropped + b.tx_underruns - underruns)

    def _listen(self) -> None:
        if self._buffers.rx_sink is not self._on_rx:
            self._buffers.rx_sink = self._on_rx

    def _maybe_unlisten(self) -> None:
        if (not self._reading and not self._probes and self._forward is None
                and self._buffers.rx_sink == self._on_rx):
            self._buffers.rx_sink = None

    def forward_to(self, sink: Callable[[bytes], None] | None) -> None:
        """Give each frame from SIP to ``sink`` as it arrives, in the loop (None: stop); the
        frames do not also go to :meth:`read`."""
        if self.closed:
            return
        self._forward = sink
        if sink is not None:
            self._listen()
        else:
            self._maybe_unlisten()

    def _on_rx(self, data: bytes) -> None:
        if self.closed:
            return
        forward = self._forward
        if forward is not None:
            self.rx_delivered += 1
            forward(data)
        elif self._reading:
            if len(self._rx) == RX_MAX:
                self.rx_dropped += 1
            self._rx.append(data)
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)
        if self._probes:
            still = []
            for frames, wanted, fut in self._probes:
                frames.append(data)
                if len(frames) >= wanted:
                    if not fut.done():
                        fut.set_result(b"".join(frames))
                elif not fut.done():
                    still.append((frames, wanted, fut))
            self._probes = still
            self._maybe_unlisten()

    async def read(self) -> bytes:
        if self.closed:
            raise AudioClosed(self.call_id)
        if not self._reading:
            self._reading = True
            self._listen()
        while not self._rx:
            if self.closed:
                raise AudioClosed(self.call_id)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.rx_delivered += 1
        return self._rx.popleft()

    def write(self, frame: bytes) -> None:
        if self.closed:
            raise AudioClosed(self.call_id)
        if len(frame) != self.frame_bytes:
            raise ValueError(f"frame of {len(frame)} bytes; expected {self.frame_bytes}")
        self._buffers.push_tx(frame)

    def play(self, frames: tuple[bytes, ...] | None) -> None:
        """Loop these frames instead of what ``write`` queues (None: back to ``write``)."""
        if self.closed:
            raise AudioClosed(self.call_id)
        self._buffers.tone = frames

    async def capture(self, seconds: float) -> bytes:
        """The next ``seconds`` of incoming audio (without disturbing ``read``)."""
        if self.closed:
            raise AudioClosed(self.call_id)
        wanted = max(1, round(seconds * 50))
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._probes.append(([], wanted, fut))
        self._listen()
        return await fut

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._forward = None
        if self._buffers.rx_sink == self._on_rx:
            self._buffers.rx_sink = None
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        for _frames, _wanted, fut in self._probes:
            if not fut.done():
                fut.set_exception(AudioClosed(self.call_id))
        self._probes = []
