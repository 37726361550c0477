"""G.711 received on the WebRTC leg, decoded in the event loop instead of aiortc's thread.

aiortc hands every complete frame out of its jitter buffer to a decoder thread through a
``queue.Queue``; the thread decodes it with FFmpeg and sends the PCM frame back to the loop
with ``run_coroutine_threadsafe``. For G.711 (one table lookup per byte) the two thread hops,
the GIL hand-offs and the frame objects cost far more than the decoding: in the worker's
profile this hand-off was the largest single cost of a call. :func:`install` puts a stand-in
for that queue on the receiver: PCMU/PCMA frames are decoded by table where they arrive (in
the loop) and fed to :class:`~bridge.media.tracks.IncomingAudio`; anything else (Opus, G.722,
the end-of-stream marker) goes on to aiortc's thread unchanged.

The queue is a private attribute of aiortc's ``RTCRtpReceiver``: :func:`install` checks that
it is there and is a queue, and otherwise leaves the receiver alone (the slower path works).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import Any

import numpy as np

from bridge.media.tracks import g711_decode_table

log = logging.getLogger(__name__)

_ATTR = "_RTCRtpReceiver__decoder_queue"
_CODECS = {"audio/pcmu": "pcmu", "audio/pcma": "pcma"}


class InlineG711Queue:
    """Stands in for aiortc's decoder queue (``put`` from the loop, ``get`` from the thread)."""

    def __init__(self, inner: queue.Queue[Any], sink: Callable[[bytes], None]) -> None:
        self.inner = inner
        self.sink = sink
        self.decoded = 0
        self._codec: Any = None
        self._table: np.ndarray | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            codec, frame = item
            if codec is not self._codec:  # the same codec object comes with every frame
                self._codec, self._table = codec, self._table_for(codec)
            if self._table is not None:
                self.sink(self._table[np.frombuffer(frame.data, dtype=np.uint8)].tobytes())
                self.decoded += 1
                return
        self.inner.put(item, block, timeout)

    @staticmethod
    def _table_for(codec: Any) -> np.ndarray | None:
        name = _CODECS.get(str(getattr(codec, "mimeType", "")).lower())
        if name is None or getattr(codec, "clockRate", 0) != 8000:
            return None
        return g711_decode_table(name)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.inner.get(block, timeout)


def install(receiver: Any, sink: Callable[[bytes], None]) -> InlineG711Queue | None:
    """Decode this receiver's G.711 in the loop, giving 8 kHz PCM to ``sink``; None (and
    nothing changed) when this aiortc does not have the queue where we expect it."""
    inner = getattr(receiver, _ATTR, None)
    if isinstance(inner, InlineG711Queue):
        return inner
    if not isinstance(inner, queue.Queue):
        log.warning("aiortc's receiver has no decoder queue to stand in for; "
                    "G.711 is decoded in its thread")
        return None
    shim = InlineG711Queue(inner, sink)
    setattr(receiver, _ATTR, shim)
    return shim
