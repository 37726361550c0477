"""SRTP audio taken off the ICE connection where it arrives (bridge/media/srtp_receive.py).

What goes which way is checked here with stand-ins for aiortc's DTLS transport and aioice's
connection, on purpose: they are handed DTLS records, SRTCP, packets before the keys exist and
packets that fail authentication, which a connected loopback call does not produce on demand.
Audio through a real DTLS-SRTP connection taking this path: test_g711_packets.py."""

from __future__ import annotations

from typing import Any

import pylibsrtp
from aiortc.rtcdtlstransport import State

from bridge.media import srtp_receive

KEY = bytes(range(30))


def session(direction: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=KEY, ssrc_type=direction)
    return pylibsrtp.Session(policy=policy)


def rtp(seq: int, pt: int = 0) -> bytes:
    return (bytes((0x80, pt)) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
            + (7).to_bytes(4, "big") + bytes(160))


class Connection:
    def __init__(self) -> None:
        self.queued: list[bytes] = []

    def data_received(self, data: bytes, component: int) -> None:
        self.queued.append(data)


class Ice:
    def __init__(self) -> None:
        self._connection = Connection()


class Dtls:
    def __init__(self) -> None:
        self.transport = Ice()
        self._rx_srtp: Any = None
        self._state = State.CONNECTING
        self.handled: list[bytes] = []

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        self.handled.append(data)


def test_srtp_audio_is_taken_directly_and_the_rest_goes_to_the_queue() -> None:
    dtls = Dtls()
    connection = dtls.transport._connection
    direct = srtp_receive.install(dtls)
    assert isinstance(direct, srtp_receive.DirectReceive)
    assert srtp_receive.install(dtls) is direct  # once
    sender = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    first = sender.protect(rtp(1))
    connection.data_received(first, 1)  # no keys yet, not connected: aiortc's way
    dtls._rx_srtp = session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    dtls._state = State.CONNECTED
    second = sender.protect(rtp(2))
    connection.data_received(second, 1)
    dtls_record = bytes((22, 254, 253)) + bytes(20)
    connection.data_received(dtls_record, 1)
    rtcp = bytes((0x80, 200)) + bytes(26)  # a sender report's type: SRTCP goes to aiortc
    connection.data_received(rtcp, 1)
    forged = bytearray(sender.protect(rtp(3)))
    forged[-1] ^= 0xFF  # fails authentication: dropped, counted
    connection.data_received(bytes(forged), 1)
    assert connection.queued == [first, dtls_record, rtcp]
    assert dtls.handled == [rtp(2)]
    assert direct.taken == 1 and direct.failed == 1


def test_an_aiortc_without_the_expected_attributes_is_left_alone() -> None:
    dtls = Dtls()
    del dtls._rx_srtp
    assert srtp_receive.install(dtls) is None
    assert not isinstance(dtls.transport._connection.data_received, srtp_receive.DirectReceive)
    assert srtp_receive.install(object()) is None
