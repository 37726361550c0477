"""Prometheus metrics after real calls, and /health and /ready for orchestrators."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp

from tests.calls.test_bridged_calls import HS
from tests.conftest import NewUser, Stack
from tests.harness.bridge_proc import BridgeProc
from tests.harness.call_client import CallClient, CallState
from tests.harness.dm_calls import connected_call, dm_with, notice_in
from tests.peers.ports import free_port
from tests.peers.sipp import Sipp


async def scrape(stack: Stack) -> str:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{stack.metrics_port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_show_a_call_outcome_and_setup_latency(stack: Stack, new_user: NewUser,
                                                             tmp_path: Path) -> None:
    caller = await new_user("metric")
    before = await scrape(stack)
    busy_before = value(before, "bridge_call_attempts_total", company="trunkco", outcome="busy")
    pbx = Sipp.uas_reject(tmp_path, code=486, local_port=stack.trunk_pbx_port).start()
    room = await dm_with(caller, f"@sip_trunkco_201:{HS}")
    client = CallClient(caller.transport(room))
    try:
        await client.place_call()
        await client.wait_for_state(CallState.ENDED, timeout=30)
        await notice_in(caller, room, "is busy")
    finally:
        await client.close()
        pbx.stop()
    echo = Sipp.uas_echo(tmp_path, local_port=stack.trunk_pbx_port).start()
    try:
        async with connected_call(caller, room=room, tone_hz=800) as (client, _):
            call_id = client.call_id
            during = await scrape(stack)
            assert value(during, "bridge_active_calls", company="trunkco",
                         direction="outbound") == 1
            await asyncio.sleep(3.0)  # 150 frames each way through the echo
            await client.hangup()
    finally:
        echo.stop()
    for _ in range(50):
        after = await scrape(stack)
        if value(after, "bridge_audio_frames_total", direction="to_sip") > value(
                during, "bridge_audio_frames_total", direction="to_sip"):
            break
        await asyncio.sleep(0.1)
    # Audio frames of that call, counted by its worker when the media closed.
    for direction in ("to_sip", "to_matrix"):
        frames = (value(after, "bridge_audio_frames_total", direction=direction)
                  - value(during, "bridge_audio_frames_total", direction=direction))
        lost = (value(after, "bridge_audio_frames_lost_total", direction=direction)
                - value(during, "bridge_audio_frames_lost_total", direction=direction))
        assert frames >= 120, (direction, frames)
        assert lost / (frames + lost) <= 0.05, (direction, frames, lost)
    # Every line about the call carries its correlation ID, the worker's lines included.
    lines = [json.loads(line) for line in stack.bridge.log_text().splitlines()
             if line.startswith("{")]
    mine = [rec["msg"] for rec in lines if rec.get("call_id") == call_id]
    assert any("answered by the PBX" in m for m in mine), mine
    assert any(m.startswith("[w") and "WebRTC leg connected" in m for m in mine), mine
    assert any("audio frames to Matrix" in m for m in mine), mine
    assert any(" ended: " in m for m in mine), mine
    assert value(after, "bridge_call_attempts_total", company="trunkco", outcome="busy") == busy_before + 1
    assert value(after, "bridge_call_attempts_total", company="trunkco", outcome="completed") >= 1
    assert value(after, "bridge_call_setup_overhead_seconds_count", step="answer") >= 1
    assert value(after, "bridge_call_setup_overhead_seconds_count", step="invite") >= 1
    assert value(after, "bridge_active_calls", company="trunkco", direction="outbound") == 0
    assert value(after, "bridge_workers_alive") >= 1
    assert value(after, "bridge_pbx_link_up", company="acme", mode="register") == 1
    assert value(after, "bridge_matrix_transaction_seconds_count") > 0
    assert re.search(r"^bridge_messages_total", after, re.M) or "bridge_messages" in after


async def test_health_and_ready(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{stack.bridge.url}/health") as r:
            assert r.status == 200
        async with s.get(f"{stack.bridge.url}/ready") as r:
            body = await r.json()
            assert r.status == 200 and body["ready"] is True, body
            assert body["workers_alive"] >= 1 and body["pbx_links_down"] == []


async def test_ready_is_false_when_the_pbx_link_is_down(tmp_path: Path) -> None:
    """A bridge whose registrar does not answer (and with no homeserver): /ready says 503
    and names what is down, while /health still says it is alive."""
    dead = free_port()
    bridge = BridgeProc(tmp_path / "b", f"http://127.0.0.1:{free_port()}", HS, overrides={
        "companies": {"acme": {"name": "Acme", "main_line": "100",
                               "pbx": {"mode": "register", "registrar": f"sip:127.0.0.1:{dead}",
                                       "username": "matrix", "password": "pw",
                                       "transport": "tcp"}}},
        "bridge": {"default_company": None},
        "sip": {"listen": {"udp": "127.0.0.1:0", "tcp": "127.0.0.1:0"}, "workers": 1},
    })
    bridge.generate()
    bridge.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{bridge.url}/health") as r:
                assert r.status == 200
            for _ in range(50):
                async with s.get(f"{bridge.url}/ready") as r:
                    body = await r.json()
                if "acme" in body.get("pbx_links_down", []):
                    break
                await asyncio.sleep(0.2)
            assert r.status == 503 and body["ready"] is False
            assert body["pbx_links_down"] == ["acme"] and body["homeserver"] is False
            assert body["database"] is True and body["workers_alive"] == 1
    finally:
        bridge.stop()
