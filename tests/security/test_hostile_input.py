"""Hostile input to a worker's UDP and TCP ports, while a call is in progress on it.

A stranger (127.0.0.1, admitted by no link) and the PBX itself (127.0.0.2, the trunk's
allowed source, whose malformed requests go past the source filter into pjsip/pjsua and the
worker's Python callbacks) send garbage, truncated requests, huge headers, bad
Content-Length values, invalid URIs, INVITEs with broken SDP, a 1 MB MESSAGE over TCP and a
burst of hundreds of requests. The worker must keep running (same PID, no restart), answer the
stranger with nothing but 403, and the call must keep its audio (a 1 kHz tone echoed by the
PBX's sipp, probed before, during and after the flood).

Known gap, reported as xfail below: idle TCP connections exhaust pjsip's handle table
(PJSIP_MAX_TRANSPORTS = 64 in this wheel, which also sizes the ioqueue); from then on new TCP
connections are refused until the attacker lets go (an accepted connection that sends
nothing is kept PJSIP_TRANSPORT_SERVER_IDLE_TIME = 600 s). UDP and calls already set up are
not affected.

Known gap, worse, also reported as xfail: with the table full, a connection that closes and
one that opens within 500 ms crash the worker. pjsip moves a closed socket's ioqueue key to a
"closing" list for PJ_IOQUEUE_KEY_FREE_DELAY (500 ms); an accept in that window finds fewer
sockets than the maximum in use but no free key, and this wheel's pjlib asserts (abort)
instead of refusing. The pool replaces the worker, but its calls are lost. Closing idle
connections from our side (tried) only feeds that window, so the worker does not; expose the
workers' TCP/TLS ports only behind the Kamailio front (docs/dispatcher.md) or a firewall
connection limit (docs/admin-guide.md).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bridge.sip.events import Answered, AudioReport
from bridge.sip.handles import CallHandle
from bridge.sip.pool import WorkerPool
from tests.security.hostile import (
    INSIDER,
    STRANGER,
    FloodReport,
    IdleTcp,
    UdpPeer,
    request,
    status_of,
    tcp_exchange,
    udp_corpus,
)
from tests.sip.conftest import StartPool, eventually, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp

TONE_HZ = 1000.0


def ports(pool: WorkerPool) -> tuple[int, int]:
    udp = int(worker_address(pool).rsplit(":", 1)[1])
    tcp = int(worker_address(pool, transport="tcp").rsplit(":", 1)[1])
    return udp, tcp


def assert_tone(report: AudioReport, when: str) -> None:
    assert abs(report.freq_hz - TONE_HZ) <= 20 and report.level_dbfs > -20, (when, report)


def flood(udp_port: int, tcp_port: int) -> FloodReport:
    """Everything hostile, from the stranger and from the PBX's own address (bounded)."""
    rng = random.Random(20250907)
    report = FloodReport()
    start = time.monotonic()
    with UdpPeer(STRANGER) as stranger, UdpPeer(INSIDER) as insider:
        batches = [
            (stranger, udp_corpus(udp_port, STRANGER, stranger.port, rng, burst=True)),
            (insider, udp_corpus(udp_port, INSIDER, insider.port, rng, burst=False)),
        ]
        for peer, packets in batches:
            for i, packet in enumerate(packets):
                peer.send(packet, udp_port)
                report.udp_packets += 1
                report.udp_bytes += len(packet)
                if i % 100 == 99:
                    peer.drain(quiet_s=0.01, max_s=0.05)  # keep our own buffer from overflowing
        target = f"sip:100@127.0.0.1:{tcp_port}"
        big = request("MESSAGE", target, transport="TCP", content_type="text/plain",
                      body=b"M" * 1_000_000)
        streams = [
            (STRANGER, big),
            (INSIDER, big),
            (STRANGER, request("OPTIONS", target, transport="TCP",
                               extra=[f"X-Huge: {'A' * 100_000}"])),
            (INSIDER, request("MESSAGE", target, src=INSIDER, transport="TCP",
                              content_type="text/plain", body="short", content_length="5000")),
            (INSIDER, request("INVITE", target, src=INSIDER, transport="TCP",
                              content_type="application/sdp", body="v=0\r\no=broken\r\n")),
        ]
        streams += [(STRANGER, rng.randbytes(65536)) for _ in range(20)]
        with ThreadPoolExecutor(max_workers=len(streams)) as pool:
            endings = pool.map(lambda s: tcp_exchange(s[1], tcp_port, s[0], 0.5)[1], streams)
            for (_src, data), ending in zip(streams, endings, strict=True):
                report.tcp_connections += 1
                report.tcp_bytes += len(data)
                report.tcp_endings[ending] = report.tcp_endings.get(ending, 0) + 1
        report.seconds = time.monotonic() - start
        stranger.drain()
        insider.drain()
        report.count(stranger.statuses())
        report.insider_statuses = sorted(set(insider.statuses()))
    return report


async def test_flood_leaves_worker_running_and_call_audio_intact(
    tmp_path: Path, start_pool: StartPool
):
    pbx = Sipp(tmp_path / "pbx", "uas_answer", rtp_echo=True, timeout_s=60).start()
    reported: list[CallHandle] = []

    async def on_call(handle: CallHandle) -> None:  # the controller: no such Matrix user
        reported.append(handle)
        await handle.reject(404, "Not Found")

    messages: list[object] = []
    pool = await start_pool(
        sip_config(trunk(domain=pbx.address, allowed_sources=(INSIDER,)),
                   transports=("udp", "tcp")),
        on_incoming_call=on_call, on_message=messages.append)
    udp_port, tcp_port = ports(pool)
    before_worker = pool.workers()[0]

    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 10)
    await call.play_tone(TONE_HZ, -12)
    before = await call.probe_audio(0.5)
    assert_tone(before, "before")

    flooding = asyncio.create_task(asyncio.to_thread(flood, udp_port, tcp_port))
    during = await call.probe_audio(1.0)
    report = await flooding
    after = await call.probe_audio(0.5)
    assert_tone(during, "during")
    assert_tone(after, "after")

    # signalling still answers, and still tells the stranger from the PBX
    with UdpPeer(STRANGER) as stranger, UdpPeer(INSIDER) as insider:
        target = f"sip:100@127.0.0.1:{udp_port}"
        assert await asyncio.to_thread(
            stranger.ask, request("OPTIONS", target, sport=stranger.port), udp_port) == 403
        assert await asyncio.to_thread(
            insider.ask, request("OPTIONS", target, src=INSIDER, sport=insider.port),
            udp_port) == 200

    # the PBX's rejected calls are gone again; ours is still up
    await eventually(lambda: pool.workers()[0].calls == 1, 5, "only our call left")
    worker = pool.workers()[0]
    assert worker.alive and worker.pid == before_worker.pid and worker.restarts == 0, worker
    assert call.state == "answered"
    # the stranger got 403 and nothing else; nothing of theirs reached the controller
    assert set(report.statuses) == {403}, report
    assert report.statuses[403] >= 150, report  # most of the burst of 300 at least
    assert all(h.info is not None and h.info.source.startswith(f"{INSIDER}:")
               for h in reported), [h.info for h in reported]
    assert all(getattr(m, "source", "").startswith(f"{INSIDER}:") for m in messages), messages
    # the PBX's broken SDP was refused by pjsua itself
    assert 400 in report.insider_statuses, report

    await call.hangup()
    await call.wait_ended(5)
    assert await pbx.done(10) == 0, pbx.explain()
    print("FLOOD", json.dumps({
        "udp_packets": report.udp_packets, "udp_bytes": report.udp_bytes,
        "tcp_connections": report.tcp_connections, "tcp_bytes": report.tcp_bytes,
        "seconds": round(report.seconds, 2), "stranger_statuses": report.statuses,
        "insider_statuses": report.insider_statuses,
        "tcp_endings": report.tcp_endings, "reported_calls": len(reported),
        "reported_messages": len(messages), "worker_pid": worker.pid,
        "restarts": worker.restarts,
        "audio": {k: [round(r.freq_hz, 1), round(r.level_dbfs, 1)]
                  for k, r in (("before", before), ("during", during), ("after", after))},
    }))


async def test_idle_tcp_connections_leave_udp_and_calls_alone(
    tmp_path: Path, start_pool: StartPool
):
    pbx = Sipp(tmp_path / "pbx", "uas_answer", rtp_echo=True, calls=2, timeout_s=60).start()
    pool = await start_pool(
        sip_config(trunk(domain=pbx.address, allowed_sources=(INSIDER,)),
                   transports=("udp", "tcp")))
    udp_port, tcp_port = ports(pool)
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 10)
    await call.play_tone(TONE_HZ, -12)
    pid = pool.workers()[0].pid

    idle = IdleTcp(tcp_port)
    try:
        opened = await asyncio.to_thread(idle.open, 80)
        await asyncio.sleep(0.5)
        assert_tone(await call.probe_audio(0.5), f"with {opened} idle TCP connections open")
        with UdpPeer(STRANGER) as stranger:
            status = await asyncio.to_thread(
                stranger.ask, request("OPTIONS", f"sip:127.0.0.1:{udp_port}", sport=stranger.port),
                udp_port)
        assert status == 403
        second = await pool.make_call("acme", "100", from_user="bob=example.org")
        await second.wait_for(Answered, 10)
        await second.play_tone(700, -12)
        heard = await second.probe_audio(0.5)
        assert abs(heard.freq_hz - 700) <= 20, heard
        await second.hangup()
        tcp_answer, ending = await asyncio.to_thread(
            tcp_exchange, request("OPTIONS", f"sip:127.0.0.1:{tcp_port}", transport="TCP"),
            tcp_port)
    finally:
        idle.close()
    worker = pool.workers()[0]
    assert worker.alive and worker.pid == pid and worker.restarts == 0, worker
    await call.hangup()
    await call.wait_ended(5)
    assert await pbx.done(10) == 0, pbx.explain()
    print("IDLE_TCP", json.dumps({"opened": opened, "new_tcp": ending,
                                  "new_tcp_status": status_of(tcp_answer)}))
    if status_of(tcp_answer) != 403:
        pytest.xfail(f"known gap: with {opened} idle TCP connections open, a new TCP "
                     f"connection is not served ({ending}); pjsip's handle table is full")


async def test_tcp_connection_churn_with_a_full_table_does_not_crash_the_worker(
    start_pool: StartPool
):
    pool = await start_pool(sip_config(trunk(allowed_sources=(INSIDER,)),
                                       transports=("udp", "tcp")))
    _udp_port, tcp_port = ports(pool)
    pid = pool.workers()[0].pid
    idle = IdleTcp(tcp_port)
    try:
        opened = await asyncio.to_thread(idle.open, 100)
        await asyncio.sleep(0.5)
        for _ in range(5):  # one leaves, one comes: the accept meets a key still closing
            idle.socks.pop(0).close()
            await asyncio.sleep(0.05)
            await asyncio.to_thread(idle.open, len(idle.socks) + 1, 3.0)
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)
    finally:
        idle.close()
    worker = pool.workers()[0]
    print("TCP_CHURN", json.dumps({"opened": opened, "alive": worker.alive,
                                   "same_pid": worker.pid == pid, "restarts": worker.restarts}))
    if worker.pid != pid or worker.restarts:
        pytest.xfail("known gap: pjsip asserts (aborts the worker) when a connection is "
                     "accepted while its ioqueue's free list is empty (a closed key still in "
                     "its 500 ms delay); keep worker TCP/TLS behind Kamailio or a firewall")
