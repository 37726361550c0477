"""A Matrix user DMs the bridge bot and gets answers, through a real Synapse."""

from __future__ import annotations

from tests.conftest import NewUser, Stack

BOT = "@sipbot:bridge.test"


def from_bot(room: str, text: str):  # type: ignore[no-untyped-def]
    return lambda e: (e["room_id"] == room and e.get("sender") == BOT
                      and e["type"] == "m.room.message"
                      and text in e.get("content", {}).get("body", ""))


async def test_dm_the_bot_help_and_ping(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    room = await user.create_dm(BOT)
    welcome = await user.wait_for(from_bot(room, "help"), timeout=20)
    assert welcome["content"]["msgtype"] == "m.notice"
    await user.send_text(room, "help")
    reply = await user.wait_for(from_bot(room, "Commands:"))
    body = reply["content"]["body"]
    assert "ping" in body and "help" in body
    await user.send_text(room, "ping")
    await user.wait_for(from_bot(room, "Pong"))
    await user.send_text(room, "frobnicate now")
    await user.wait_for(from_bot(room, "Unknown command 'frobnicate'"))
    await user.send_text(room, "ping extra args")
    await user.wait_for(from_bot(room, "Usage: ping"))
    await user.send_text(room, 'help "unclosed')
    await user.wait_for(from_bot(room, "Use quotes"))


async def test_prefix_needed_outside_the_dm(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    other = await new_user()
    room = (await user.request("POST", "/_matrix/client/v3/createRoom",
                               {"invite": [BOT, other.user_id]}))["room_id"]
    await user.wait_for(lambda e: e["room_id"] == room and e.get("state_key") == BOT
                        and e["content"].get("membership") == "join", timeout=20)
    await user.send_text(room, "ping")
    await user.send_text(room, "!sip ping")
    pong = await user.wait_for(from_bot(room, "Pong"))
    earlier = [e for e in user.events[: user.events.index(pong)]
               if e["room_id"] == room and e.get("sender") == BOT and e["type"] == "m.room.message"]
    assert earlier == []  # the bare "ping" got no answer in a group room
