"""SRTP audio taken off the ICE connection as it arrives, on the G.711 path.

aioice hands every datagram that is not STUN to ``Connection.data_received``, which puts it
on an ``asyncio.Queue``; aiortc's DTLS transport runs a task that awaits that queue, then
unprotects SRTP and routes the packet. For 50 audio packets a second per call, each packet
so costs a queue hand-off, a task wake-up and one more pass of the event loop (an extra
``epoll_wait``) before the bridge sees it. On the G.711 path (``g711_rtp``) nothing in that
task is needed for audio, so :func:`install` stands in for ``data_received`` on the leg's
ICE connection: SRTP packets (first byte 128-191, not RTCP) are unprotected and handed to
the transport's RTP handler (the DTMF hook, then :class:`~bridge.media.g711_rtp.G711Rtp`)
right where they arrive, in the protocol's ``datagram_received``. DTLS records, SRTCP and
anything before the SRTP keys exist still take aiortc's queue, unchanged.

aiortc's transport counters (``getStats``' packetsReceived) do not see the packets taken
here; the leg's own counters (``G711Rtp.received``) do.

These are private attributes of aioice 0.13 and aiortc 1.16: :func:`install` checks each
one and leaves the leg on the queue (the slower path works) when one is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aiortc.clock import current_ms
from aiortc.rtcdtlstransport import State

from bridge.media.g711_rtp import run_now

log = logging.getLogger(__name__)


class DirectReceive:
    """Stands in for ``data_received`` on one aioice connection (see the module docstring)."""

    def __init__(self, dtls: Any, queued: Callable[[bytes, int], None]) -> None:
        self._dtls = dtls
        self._queued = queued
        self.taken = 0
        self.failed = 0

    def __call__(self, data: bytes, component: int) -> None:
        dtls = self._dtls
        srtp = dtls._rx_srtp
        if (srtp is None or not 127 < data[0] < 192 or len(data) < 12
                or 192 <= data[1] <= 208 or dtls._state is not State.CONNECTED):
            self._queued(data, component)
            return
        try:
            plain = srtp.unprotect(data)
        except pylibsrtp.Error:
            self.failed += 1
            return
        self.taken += 1
        run_now(dtls._handle_rtp_data(plain, arrival_time_ms=current_ms()))


def install(dtls: Any) -> DirectReceive | None:
    """Take SRTP audio off ``dtls``'s ICE connection directly; None (nothing changed) when
    this aiortc/aioice does not have the attributes it relies on."""
    ice = getattr(dtls, "transport", None)
    connection = getattr(ice, "_connection", None)
    queued = getattr(connection, "data_received", None)
    if isinstance(queued, DirectReceive):
        return queued
    if (connection is None or not callable(queued) or not hasattr(dtls, "_rx_srtp")
            or not hasattr(dtls, "_state") or not hasattr(dtls, "_handle_rtp_data")):
        log.warning("aiortc/aioice internals differ from what the direct SRTP receive "
                    "expects; audio takes aiortc's receive task")
        return None
    direct = DirectReceive(dtls, queued)
    connection.data_received = direct
    return direct
