"""Text between Matrix DMs and PBX extensions over SIP MESSAGE, against a real Synapse, the
bridge's pjsua2 worker, sipp (trunkco's PBX) and Kamailio (acme's PBX)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import NewUser, Stack
from tests.harness.dm_calls import dm_with
from tests.peers.sipp import Sipp

HS = "bridge.test"


async def test_matrix_text_reaches_the_extension(stack: Stack, new_user: NewUser,
                                                 tmp_path: Path) -> None:
    user = await new_user()
    room = await dm_with(user, f"@sip_trunkco_201:{HS}")
    pbx = Sipp.uas_message(tmp_path, count=2, local_port=stack.trunk_pbx_port).start()
    try:
        await user.send_text(room, "Grüße from Matrix ✓")
        await user.send(room, "m.room.message", {
            "msgtype": "m.image", "body": "cat.png", "url": "mxc://bridge.test/abc"})
        await asyncio.to_thread(pbx.wait_ok, 20)
        bodies = pbx.received_messages()
        assert bodies[0] == "Grüße from Matrix ✓"
        assert "cat.png" in bodies[1] and "/_matrix/client/v1/media/download/bridge.test/abc" in bodies[1]
        msg = pbx.received("MESSAGE")[0]
        assert msg.header("Content-Type").startswith("text/plain")
        assert f"{user.user_id[1:].split(':')[0]}={HS}" in msg.header("From")
    finally:
        pbx.stop()


async def test_failed_delivery_gets_a_notice_in_reply(stack: Stack, new_user: NewUser) -> None:
    """Bob (acme 102) is known to acme's PBX but not registered: Kamailio answers 480."""
    user = await new_user()
    room = await dm_with(user, f"@sip_acme_102:{HS}")
    event_id = await user.send_text(room, "are you there?")
    notice = await user.wait_for(lambda e: e["room_id"] == room
                                 and e.get("sender") == f"@sip_acme_102:{HS}"
                                 and "Not delivered" in e["content"].get("body", ""), timeout=40)
    assert "480" in notice["content"]["body"]
    assert notice["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == event_id


async def test_extension_texts_a_matrix_user(stack: Stack, new_user: NewUser,
                                             tmp_path: Path) -> None:
    user = await new_user()
    local = user.user_id[1:].split(":")[0]
    uac = Sipp.uac_message(tmp_path, remote=stack.sip_address,
                           ruri=f"sip:{local}={HS}@{stack.sip_address}",
                           body="Hi from extension 201", from_user="201").start()
    await asyncio.to_thread(uac.wait_ok, 20)
    room = await user.wait_invite(timeout=20)
    invite = user.invites[room]["invite_state"]["events"]
    assert any(e["sender"] == f"@sip_trunkco_201:{HS}" for e in invite)
    await user.join(room)
    msg = await user.wait_for(lambda e: e["room_id"] == room and e["type"] == "m.room.message"
                              and e.get("sender") == f"@sip_trunkco_201:{HS}", timeout=20)
    assert msg["content"]["body"] == "Hi from extension 201"


async def test_the_pbx_learns_whether_the_text_was_delivered(stack: Stack, new_user: NewUser,
                                                             tmp_path: Path) -> None:
    """200 only once the Matrix event is sent; a Matrix user that does not exist gets 404
    (pjsua alone would have said 200 to both)."""
    missing = Sipp.uac_message(tmp_path / "missing", remote=stack.sip_address,
                               ruri=f"sip:nobody-here={HS}@{stack.sip_address}",
                               body="anyone?", from_user="201", expect=404).start()
    await asyncio.to_thread(missing.wait_ok, 20)
    user = await new_user()
    local = user.user_id[1:].split(":")[0]
    since = len(user.events)
    ok = Sipp.uac_message(tmp_path / "ok", remote=stack.sip_address,
                          ruri=f"sip:{local}={HS}@{stack.sip_address}",
                          body="delivered?", from_user="201", expect=200).start()
    await asyncio.to_thread(ok.wait_ok, 20)
    # The 200 came after the event was sent: the invite (with the message behind it) is there.
    room = await user.wait_invite(timeout=5)
    await user.join(room)
    msg = await user.wait_for(lambda e: e["room_id"] == room and e["type"] == "m.room.message",
                              timeout=10, start=since)
    assert msg["content"]["body"] == "delivered?"
