"""G.711 moved straight between the leg's 20 ms PCM frames and its SRTP transport.

When the WebRTC leg has negotiated PCMU or PCMA at 8 kHz, aiortc's RTP sender and receiver
do nothing the bridge needs: no encoding (a table does it), no jitter buffer worth having
(pjmedia's clock reads the frames through the slot's own buffer, which absorbs jitter), no
retransmission for audio. What they cost is a sender task that wakes per frame, an
``RtpPacket`` object built, extended and serialised per packet, and a parse, statistics and
a jitter-buffer pass per received packet. :class:`G711Rtp` replaces both media paths:

- **sending**: each frame the SIP side gives (:meth:`G711Rtp.write`, called in the loop
  once per clock tick) is encoded by table, given a 12-byte RTP header and handed to the
  transport's send path (which the DTMF hook wraps, so digits still replace audio packets).
  That path never waits (SRTP protect, then a UDP ``sendto``), so it is run to completion
  right here instead of in a task (:func:`run_now`);
- **receiving**: the DTLS transport's decrypted RTP reaches :meth:`G711Rtp.on_rtp` (below
  the DTMF hook, which takes out telephone-events first). G.711 packets (PCMU or PCMA,
  whichever the peer sends) are decoded by table and fed on as PCM; late and duplicate
  packets (sequence number not after the last one) are dropped and counted, unless they keep
  coming (the peer's numbering jumped back); other payload types go on to aiortc.

aiortc keeps the rest: ICE, DTLS-SRTP and the RTCP tasks; its sender reports get their counts
and timestamps from here (:meth:`G711Rtp.write` calls ``report`` twice a second). Its
sender is given a track that never yields, so its RTP task sleeps. The leg uses
this only when the DTMF hook could be installed (the same two private transport methods).
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from bridge.media.dtmf import HandleRtp, rtp_payload
from bridge.media.tracks import g711_decode_table, g711_table

log = logging.getLogger(__name__)

SAMPLES = 160  # 20 ms at 8 kHz
LATE_RUN = 10  # late packets in a row that mean the peer's sequence jumped back: follow it
GAP_S = 0.1  # a pause longer than this moves the RTP timestamp on and marks a new talkspurt

REPORT_EVERY = 25  # packets between updates of the sender report's counts (0.5 s)

SendRtp = Callable[[bytes], Coroutine[Any, Any, None]]
#: (RTP timestamp of the last packet sent, packets sent, payload octets sent)
Report = Callable[[int, int, int], None]


class IdleTrack(MediaStreamTrack):
    """Given to aiortc's sender: never yields a frame, so its RTP task just waits."""

    kind = "audio"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


_unfinished: set[asyncio.Future[None]] = set()


def run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to its end now if it never waits; if it does wait, a task finishes it."""
    waited = _step(coro)
    if waited is not _DONE:
        task = asyncio.ensure_future(_finish(coro, waited))
        _unfinished.add(task)
        task.add_done_callback(_unfinished.discard)


_DONE = object()


def _step(coro: Coroutine[Any, Any, None]) -> Any:
    """Run ``coro`` to its next wait: what it yielded there, or _DONE once it has ended
    (a failure is logged: a lost packet is not worth more)."""
    try:
        return coro.send(None)
    except StopIteration:
        return _DONE
    except Exception:
        log.debug("RTP send failed", exc_info=True)
        return _DONE


async def _finish(coro: Coroutine[Any, Any, None], waited: Any) -> None:
    while waited is not _DONE:
        await _Resume(waited)
        waited = _step(coro)


class _Resume:
    """Waits in a task for what ``coro`` yielded (a future, or None for a bare yield); the
    coroutine reads the future's outcome itself when it is resumed."""

    def __init__(self, waited: Any) -> None:
        self.waited = waited

    def __await__(self) -> Generator[Any, None, None]:
        if self.waited is None:
            yield None
        elif not self.waited.done():
            yield self.waited


class G711Rtp:
    """PCMU/PCMA at 8 kHz on one leg's transport (see the module docstring).

    :param encoding: ``pcmu`` or ``pcma``.
    :param payload_type: the negotiated payload type of that codec (what we send).
    :param receive: payload type → encoding of every G.711 codec we accept from the peer.
    :param ssrc: our audio SSRC (the one in our SDP; the DTMF hook matches on it).
    :param send: the transport's RTP send path (already wrapped by the DTMF hook).
    :param forward: where packets of other payload types go (aiortc's own handling).
    :param sink: gets the decoded 8 kHz s16 PCM of each packet.
    :param direction: returns the transceiver's current direction while the leg is
        connected, None before and after (nothing is sent or taken then).
    """

    def __init__(
        self,
        encoding: str,
        payload_type: int,
        receive: dict[int, str],
        ssrc: int,
        send: SendRtp,
        forward: HandleRtp,
        sink: Callable[[bytes], None],
        direction: Callable[[], str | None],
    ) -> None:
        self.encoding = encoding
        self.payload_type = payload_type
        self.ssrc = ssrc
        self._send = send
        self._forward = forward
        self._sink = sink
        self._direction = direction
        self._encode = g711_table(encoding)
        self._decode = {pt: g711_decode_table(name) for pt, name in receive.items()}
        self._seq = random.getrandbits(16)
        self._timestamp = random.getrandbits(32)
        self._last_send: float | None = None
        self._rx_ssrc: int | None = None
        self._rx_seq = 0
        self._late_run = 0
        #: given the counts for RTCP sender reports every REPORT_EVERY packets
        self.report: Report | None = None
        self.sent = 0
        self.octets = 0
        self.received = 0
        self.late = 0

    # --- sending -----------------------------------------------------------------------
    def write(self, frame: bytes) -> None:
        """Send one 20 ms frame (s16 mono, 8 kHz) now, if the leg may send."""
        if self._direction() not in ("sendrecv", "sendonly"):
            return
        now = time.monotonic()
        marker = self._last_send is None or now - self._last_send > GAP_S
        if marker and self._last_send is not None:
            # a pause (hold, a stalled source): the timestamp follows the clock across it
            self._timestamp += round((now - self._last_send) / 0.02 - 1) * SAMPLES
        self._last_send = now
        header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | self.payload_type,
                             self._seq, self._timestamp & 0xFFFFFFFF, self.ssrc)
        payload = self._encode[np.frombuffer(frame, dtype="<u2")].tobytes()
        self._seq = (self._seq + 1) & 0xFFFF
        self.sent += 1
        self.octets += len(payload)
        run_now(self._send(header + payload))
        if self.report is not None and self.sent % REPORT_EVERY == 1:
            self.report(self._timestamp & 0xFFFFFFFF, self.sent, self.octets)
        self._timestamp += SAMPLES

    # --- receiving ---------------------------------------------------------------------
    async def on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        table = self._decode.get(data[1] & 0x7F) if len(data) >= 12 else None
        if table is None:
            await self._forward(data, arrival_time_ms=arrival_time_ms)
            return
        if self._direction() not in ("sendrecv", "recvonly"):
            return
        ssrc = int.from_bytes(data[8:12], "big")
        seq = int.from_bytes(data[2:4], "big")
        if ssrc == self._rx_ssrc:
            ahead = (seq - self._rx_seq) & 0xFFFF
            if (ahead == 0 or ahead >= 0x8000) and self._late_run < LATE_RUN:
                # a duplicate, or later than a newer one; many in a row: the peer's
                # sequence numbers jumped back, and the stream goes on from there
                self._late_run += 1
                self.late += 1
                return
        self._late_run = 0
        self._rx_ssrc, self._rx_seq = ssrc, seq
        payload = rtp_payload(data)
        if not payload:
            return
        self.received += 1
        self._sink(table[np.frombuffer(payload, dtype=np.uint8)].tobytes())
