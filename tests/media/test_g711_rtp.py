"""The leg's own G.711 RTP path (bridge/media/g711_rtp.py), packet by packet.

The transport is replaced by lists here, on purpose: these tests hand it reordered,
duplicated and foreign packets that a loopback connection never produces. Audio through a
real DTLS-SRTP connection is checked in test_g711_packets.py and test_webrtc_leg.py."""

from __future__ import annotations

import asyncio

import numpy as np

from bridge.media import tone
from bridge.media.dtmf import rtp_payload
from bridge.media.g711_rtp import G711Rtp, run_now
from bridge.media.tracks import g711_decode_table, g711_table


class Wire:
    def __init__(self, direction: str = "sendrecv") -> None:
        self.direction: str | None = direction
        self.connected = True
        self.sent: list[bytes] = []
        self.forwarded: list[bytes] = []
        self.pcm: list[bytes] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def forward(self, data: bytes, arrival_time_ms: int) -> None:
        self.forwarded.append(data)

    def path(self) -> G711Rtp:
        rtp = G711Rtp("pcmu", 0, {0: "pcmu", 8: "pcma"}, 0x11223344, self.send, self.forward,
                      self.pcm.append, lambda: self.direction if self.connected else None)
        return rtp


def packet(pt: int, seq: int, payload: bytes, ssrc: int = 7) -> bytes:
    return (bytes((0x80, pt)) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
            + ssrc.to_bytes(4, "big") + payload)


def test_frames_become_pcmu_packets_in_sequence() -> None:
    wire = Wire()
    rtp = wire.path()
    frames = list(tone.sine_frames(1000, 8000, count=3))
    for frame in frames:
        rtp.write(frame)
    assert len(wire.sent) == 3
    seqs = [int.from_bytes(p[2:4], "big") for p in wire.sent]
    stamps = [int.from_bytes(p[4:8], "big") for p in wire.sent]
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == [0, 1, 2]
    assert [(t - stamps[0]) & 0xFFFFFFFF for t in stamps] == [0, 160, 320]
    assert [p[1] for p in wire.sent] == [0x80, 0, 0]  # marker on the first packet only
    assert {int.from_bytes(p[8:12], "big") for p in wire.sent} == {0x11223344}
    table = g711_table("pcmu")
    for frame, sent in zip(frames, wire.sent, strict=True):
        assert rtp_payload(sent) == table[np.frombuffer(frame, dtype="<u2")].tobytes()


def test_sender_report_counts_follow_what_was_sent() -> None:
    wire = Wire()
    rtp = wire.path()
    reports: list[tuple[int, int, int]] = []
    rtp.report = lambda *counts: reports.append(counts)
    for _ in range(30):
        rtp.write(bytes(320))
    first_ts = int.from_bytes(wire.sent[0][4:8], "big")
    ts_26 = int.from_bytes(wire.sent[25][4:8], "big")
    assert reports == [(first_ts, 1, 160), (ts_26, 26, 26 * 160)]


def test_nothing_is_sent_before_connected_or_while_not_sending() -> None:
    wire = Wire("recvonly")
    rtp = wire.path()
    frame = bytes(320)
    rtp.write(frame)
    wire.direction = "sendonly"
    wire.connected = False
    rtp.write(frame)
    assert wire.sent == []
    wire.connected = True
    rtp.write(frame)
    assert len(wire.sent) == 1


async def test_late_duplicate_and_foreign_packets() -> None:
    wire = Wire()
    rtp = wire.path()
    ulaw = bytes(range(100, 200)) + bytes(60)
    await rtp.on_rtp(packet(0, 10, ulaw), 0)
    await rtp.on_rtp(packet(0, 10, ulaw), 0)  # duplicate
    await rtp.on_rtp(packet(0, 12, ulaw), 0)
    await rtp.on_rtp(packet(0, 11, ulaw), 0)  # later than 12: dropped
    await rtp.on_rtp(packet(8, 13, ulaw), 0)  # PCMA from the same peer is decoded too
    await rtp.on_rtp(packet(101, 14, b"\x01\x00\x00\xa0"), 0)  # not G.711: aiortc's
    await rtp.on_rtp(packet(0, 5, ulaw, ssrc=8), 0)  # a new SSRC starts afresh
    await rtp.on_rtp(packet(0, 0xFFFF, ulaw, ssrc=8), 0)  # older than 5: dropped
    assert (rtp.received, rtp.late) == (4, 3)
    assert len(wire.forwarded) == 1 and wire.forwarded[0][1] == 101
    mu, a = g711_decode_table("pcmu"), g711_decode_table("pcma")
    raw = np.frombuffer(ulaw, dtype=np.uint8)
    assert wire.pcm == [mu[raw].tobytes()] * 2 + [a[raw].tobytes(), mu[raw].tobytes()]


async def test_a_sequence_that_jumps_back_is_followed_after_a_few_packets() -> None:
    wire = Wire()
    rtp = wire.path()
    await rtp.on_rtp(packet(0, 40000, bytes(160)), 0)
    for seq in range(10000, 10020):
        await rtp.on_rtp(packet(0, seq, bytes(160)), 0)
    assert (rtp.late, rtp.received) == (10, 11)  # 10 dropped as late, then followed


async def test_wrap_around_is_in_order_and_held_side_drops() -> None:
    wire = Wire()
    rtp = wire.path()
    await rtp.on_rtp(packet(0, 0xFFFF, bytes(160)), 0)
    await rtp.on_rtp(packet(0, 0, bytes(160)), 0)
    assert (rtp.received, rtp.late) == (2, 0)
    wire.direction = "sendonly"
    await rtp.on_rtp(packet(0, 1, bytes(160)), 0)
    assert rtp.received == 2 and len(wire.pcm) == 2


async def test_a_pause_moves_the_timestamp_on_and_marks_the_talkspurt() -> None:
    wire = Wire()
    rtp = wire.path()
    rtp.write(bytes(320))
    await asyncio.sleep(0.3)
    rtp.write(bytes(320))
    first, second = wire.sent
    assert second[1] & 0x80
    step = (int.from_bytes(second[4:8], "big") - int.from_bytes(first[4:8], "big")) & 0xFFFFFFFF
    assert 14 * 160 <= step <= 17 * 160, step


async def test_run_now_finishes_a_send_that_waits() -> None:
    done: list[str] = []

    async def sends_at_once() -> None:
        done.append("now")

    async def waits() -> None:
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        done.append("later")

    async def fails() -> None:
        raise ConnectionError("not connected")

    run_now(sends_at_once())
    assert done == ["now"]
    run_now(waits())
    run_now(fails())  # logged, not raised
    assert done == ["now"]
    await asyncio.sleep(0.05)
    assert done == ["now", "later"]
