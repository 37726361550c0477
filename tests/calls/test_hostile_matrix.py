"""Hostile or broken m.call.* events: each gets a clear answer (or is ignored with a log
line) and a call in progress keeps its audio."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.calls.test_bridged_calls import HS, assert_tone
from tests.conftest import NewUser, Stack
from tests.harness.call_client import CallState
from tests.harness.dm_calls import connected_call, dm_with, notice_in
from tests.peers.sipp import Sipp

GOOD_SDP_START = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


async def inject(stack: Stack, txn_id: str, event: dict[str, Any]) -> None:
    """Deliver one event to the bridge the way the homeserver would (its transaction API)."""
    hs = stack.tokens["hs_token"]
    async with aiohttp.ClientSession() as s, s.put(
            f"{stack.bridge.url}/_matrix/app/v1/transactions/{txn_id}",
            headers={"Authorization": f"Bearer {hs}"}, json={"events": [event]}) as r:
        assert r.status == 200


async def test_bad_invites_are_refused_with_a_notice(stack: Stack, new_user: NewUser) -> None:
    user = await new_user("hostile")
    room = await dm_with(user, f"@sip_trunkco_201:{HS}")
    cases = [
        ("no-audio", {"type": "offer", "sdp": GOOD_SDP_START + "m=video 9 RTP/AVP 96\r\n"}),
        ("wrong-type", "not an object"),
        # Synapse refuses events over 64 KiB (413), so this one is delivered to the bridge
        # directly, as the homeserver would.
        ("huge", {"type": "offer", "sdp": GOOD_SDP_START + "m=audio 9 RTP/AVP 0\r\n"
                  + "a=x:" + "y" * 70000 + "\r\n"}),
    ]
    for call_id, offer in cases:
        since = len(user.events)
        content = {"call_id": call_id, "party_id": "p", "version": "1", "lifetime": 60000,
                   "offer": offer}
        if call_id != "huge":
            await user.send(room, "m.call.invite", content)
        else:
            await inject(stack, f"huge-{room}", {
                "type": "m.call.invite", "room_id": room, "sender": user.user_id,
                "event_id": f"$huge{room}", "origin_server_ts": 0, "content": content})
        hangup = await user.wait_for(lambda e, cid=call_id: e["type"] == "m.call.hangup"
                                     and e["content"].get("call_id") == cid,
                                     timeout=15, start=since)
        assert hangup["content"]["reason"] == "unknown_error"
        await notice_in(user, room, "The bridge cannot take this call")
    # Events for calls that do not exist are ignored (and logged).
    await user.send(room, "m.call.hangup", {"call_id": "nope", "party_id": "p", "version": "1"})
    await user.send(room, "m.call.candidates", {"call_id": "nope", "party_id": "p",
                                                "version": "1", "candidates": [{"candidate": ""}]})
    await asyncio.sleep(1.0)
    log = stack.bridge.log_text()
    assert "bad m.call.invite" in log and "for unknown call nope" in log


async def test_garbage_during_a_call_leaves_it_running(stack: Stack, new_user: NewUser,
                                                       tmp_path: Path) -> None:
    user = await new_user("noisy")
    intruder = await new_user("intruder")
    pbx = Sipp.uas_echo(tmp_path, local_port=stack.trunk_pbx_port).start()
    try:
        async with connected_call(user, f"@sip_trunkco_201:{HS}",
                                  tone_hz=1000) as (client, room):
            cid = client.call_id
            # Wrong-typed fields, a hangup from someone else, junk candidates.
            party = client.party_id
            await user.send(room, "m.call.candidates", {"call_id": cid, "party_id": party,
                                                        "version": "1", "candidates": "junk"})
            await user.send(room, "m.call.candidates", {"call_id": cid, "party_id": party,
                                                        "version": "1",
                                                        "candidates": [{"candidate": "garbage"}]})
            await user.send(room, "m.call.select_answer", {"call_id": cid, "version": "1"})
            # A hangup from someone who is not the call's party (injected as the homeserver
            # would deliver it): ignored.
            await inject(stack, f"intrude-{cid}", {
                "type": "m.call.hangup", "room_id": room, "sender": intruder.user_id,
                "event_id": f"$intrude{cid}", "origin_server_ts": 0,
                "content": {"call_id": cid, "party_id": "x", "version": "1",
                            "reason": "user_hangup"}})
            await asyncio.sleep(1.0)
            assert client.state == CallState.CONNECTED
            assert_tone(await client.record(1.0), 8000, 1000)  # still echoed
            await client.hangup()
    finally:
        pbx.stop()
