"""No open relay: requests naming a foreign host are refused and nothing goes onward.

A sipp UAS on its own loopback port stands for the foreign host. A stranger sends INVITE,
MESSAGE, OPTIONS and REGISTER whose Request-URI (or Route) names it, over UDP and TCP: each
gets 403 from the source filter. The trunk's PBX (127.0.0.2, admitted) sending the same is
taken as a call or message *for the bridge* (the controller decides; here it rejects the
call): a worker is a user agent, never a proxy. Either way the foreign host receives nothing;
a last OPTIONS sent to it directly shows that its trace would have recorded a request.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path

from bridge.sip.events import IncomingMessage
from bridge.sip.handles import CallHandle
from tests.peers.sipp import parse_message_trace
from tests.security.hostile import INSIDER, STRANGER, UdpPeer, request, status_of, tcp_exchange
from tests.sip.conftest import StartPool, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp


def relay_attempts(foreign: str, src: str, sport: int, transport: str = "UDP") -> list[bytes]:
    route = f"Route: <sip:{foreign};lr>"
    req = partial(request, src=src, sport=sport, transport=transport)
    return [
        req("INVITE", f"sip:100@{foreign}"),
        req("INVITE", "sip:+15551234567@evil.example", extra=[route]),
        req("INVITE", f"sip:100@evil.example;maddr={foreign.split(':')[0]}"),
        req("MESSAGE", f"sip:bob@{foreign}", content_type="text/plain", body="relay me"),
        req("MESSAGE", "sip:bob@evil.example", extra=[route], content_type="text/plain",
            body="relay me"),
        req("OPTIONS", f"sip:{foreign}"),
        req("REGISTER", f"sip:{foreign}", to=f"<sip:100@{foreign}>"),
    ]


async def test_no_relay_to_a_foreign_host(tmp_path: Path, start_pool: StartPool):
    foreign = Sipp(tmp_path / "foreign", "uas_answer", timeout_s=60).start()
    calls: list[CallHandle] = []
    messages: list[IncomingMessage] = []

    async def on_call(handle: CallHandle) -> None:
        calls.append(handle)
        await handle.reject(404, "Not Found")

    pool = await start_pool(
        sip_config(trunk(domain=f"{INSIDER}:5060", allowed_sources=(INSIDER,)),
                   transports=("udp", "tcp")),
        on_incoming_call=on_call, on_message=messages.append)
    port = int(worker_address(pool).rsplit(":", 1)[1])
    tcp_port = int(worker_address(pool, transport="tcp").rsplit(":", 1)[1])

    def attack() -> dict[str, list[int | None]]:
        out: dict[str, list[int | None]] = {"stranger_udp": [], "stranger_tcp": [],
                                            "pbx_udp": []}
        with UdpPeer(STRANGER) as stranger:
            for packet in relay_attempts(foreign.address, STRANGER, stranger.port):
                out["stranger_udp"].append(stranger.ask(packet, port))
        for packet in relay_attempts(foreign.address, STRANGER, 5060, "TCP"):
            got, _ending = tcp_exchange(packet, tcp_port, STRANGER, timeout_s=2.0)
            out["stranger_tcp"].append(status_of(got))
        with UdpPeer(INSIDER) as pbx:
            for packet in relay_attempts(foreign.address, INSIDER, pbx.port)[:5]:
                out["pbx_udp"].append(pbx.ask(packet, port, timeout_s=3.0))
        return out

    answers = await asyncio.to_thread(attack)
    await asyncio.sleep(1.0)  # anything relayed would have arrived by now
    print("RELAY", json.dumps(answers))
    assert set(answers["stranger_udp"]) == {403}, answers
    assert set(answers["stranger_tcp"]) == {403}, answers
    # the PBX's requests ended at the bridge: calls for the controller, messages taken
    assert answers["pbx_udp"] == [404, 404, 404, 200, 200], answers
    assert [h.info.target for h in calls if h.info] == ["100", "+15551234567", "100"]
    assert [m.source.split(":")[0] for m in messages] == [INSIDER, INSIDER]

    # positive control: the foreign host's trace records what reaches it
    with UdpPeer(STRANGER) as me:
        me.send(request("OPTIONS", f"sip:{foreign.address}", sport=me.port), foreign.port)
        await asyncio.to_thread(me.drain, 0.5, 2.0)
    foreign.stop()
    received = [m for m in parse_message_trace(foreign.messages()) if m.direction == "received"]
    assert len(received) == 1, foreign.explain()  # only the control, nothing relayed
    assert received[0].method == "OPTIONS", foreign.explain()
    assert f"mallory@127.0.0.1:{me.port}>" in (received[0].header("from") or ""), foreign.explain()
