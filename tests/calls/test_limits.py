"""Limits against floods: concurrent calls per user, call attempts and messages per minute.
Each refusal reaches the user as a busy hangup or a notice, and nothing reaches the PBX."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.limits import SlidingWindow
from tests.calls.test_bridged_calls import HS
from tests.conftest import NewUser, Stack
from tests.harness.call_client import CallClient, CallOptions, CallState
from tests.harness.dm_calls import dm_with, notice_in
from tests.peers.sipp import Sipp


def test_sliding_window() -> None:
    now = [0.0]
    w = SlidingWindow(2, 60.0, clock=lambda: now[0])
    assert w.allow("a") and w.allow("a") and not w.allow("a") and w.allow("b")
    now[0] = 61.0
    assert w.allow("a")


async def test_call_attempts_per_minute(stack: Stack, new_user: NewUser) -> None:
    user = await new_user("flood")
    room = await dm_with(user, f"@sip_acme_109:{HS}")  # 404 from the PBX: quick attempts
    for _ in range(8):
        client = CallClient(user.transport(room))
        try:
            await client.place_call()
            await client.wait_for_state(CallState.ENDED, timeout=20)
            assert client.hangup_reason == "unknown_error"
        finally:
            await client.close()
    client = CallClient(user.transport(room))
    try:
        await client.place_call()
        await client.wait_for_state(CallState.ENDED, timeout=20)
        assert client.hangup_reason == "user_busy"
    finally:
        await client.close()
    await notice_in(user, room, "Too many calls in a minute")


async def test_concurrent_calls_per_user(stack: Stack, new_user: NewUser, tmp_path: Path) -> None:
    user = await new_user("busy")
    pbx = Sipp.uas_ring(tmp_path, calls=2, local_port=stack.trunk_pbx_port).start()
    clients: list[CallClient] = []
    try:
        for ghost in (f"@sip_trunkco_201:{HS}", f"@sip_trunkco:{HS}"):
            room = await dm_with(user, ghost)
            c = CallClient(user.transport(room), CallOptions(lifetime_ms=30000))
            clients.append(c)
            await c.place_call()
        for _ in range(100):  # both ring at the PBX
            if len(pbx.received("INVITE")) >= 2:
                break
            await asyncio.sleep(0.1)
        room3 = await dm_with(user, f"@sip_acme_101:{HS}")
        third = CallClient(user.transport(room3))
        clients.append(third)
        await third.place_call()
        await third.wait_for_state(CallState.ENDED, timeout=20)
        assert third.hangup_reason == "user_busy"
        await notice_in(user, room3, "already have 2 call(s) in progress")
        for c in clients[:2]:
            await c.hangup()
        # The PBX answers both CANCELs before it goes: a CANCEL still being retransmitted
        # would reach the next test's PBX on this port.
        await asyncio.to_thread(pbx.wait_ok, 20)
    finally:
        for c in clients:
            await c.close()
        pbx.stop()


async def test_messages_per_minute(stack: Stack, new_user: NewUser, tmp_path: Path) -> None:
    user = await new_user("chatty")
    room = await dm_with(user, f"@sip_trunkco_201:{HS}")
    pbx = Sipp.uas_message(tmp_path, count=5, local_port=stack.trunk_pbx_port).start()
    try:
        for i in range(6):
            await user.send_text(room, f"message {i}")
        await notice_in(user, room, "Not delivered: you sent more than 5 messages", timeout=20)
        await asyncio.to_thread(pbx.wait_ok, 20)
        assert len(pbx.received_messages()) == 5
    finally:
        pbx.stop()
