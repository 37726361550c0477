"""Finding companies by name through a real Synapse: the dial pad's thirdparty lookups, the
public room directory, the alias, the DM that follows a join, and the bot's search/call."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.conftest import NewUser, Stack
from tests.harness.matrix_user import MatrixUser

HS = "bridge.test"


async def dialpad(user: MatrixUser, text: str, protocol: str = "m.protocol.pstn") -> list[str]:
    res = await user.request("GET", f"/_matrix/client/v3/thirdparty/user/{protocol}",
                             query={"m.id.phone": text})
    return [r["userid"] for r in res]


async def test_protocols_as_a_client_sees_them(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    protocols = await user.request("GET", "/_matrix/client/v3/thirdparty/protocols")
    for name in ("m.protocol.pstn", "im.vector.protocol.pstn", "sip"):
        assert name in protocols, protocols
        assert protocols[name]["instances"], name
    assert protocols["m.protocol.pstn"]["user_fields"] == ["m.id.phone"]
    assert protocols["sip"]["user_fields"] == ["company", "extension"]
    assert protocols["sip"]["instances"][0]["instance_id"]


@pytest.mark.parametrize("text,expected", [
    ("acme", [f"@sip_acme:{HS}"]),
    ("Acme Corp", [f"@sip_acme:{HS}"]),
    ("ACME", [f"@sip_acme:{HS}"]),
    ("glo", [f"@sip_globex:{HS}"]),
    ("cafe muller", [f"@sip_cafe-muller:{HS}"]),
    ("Café", [f"@sip_cafe-muller:{HS}"]),
    ("acme 101", [f"@sip_acme_101:{HS}"]),
    ("101", [f"@sip_acme_101:{HS}"]),  # the server's default company is acme
    ("acme 102", []),  # not public: the dial pad does not know who asks
    ("initech", []),
    ("acme 109", [f"@sip_acme_109:{HS}"]),  # within acme's dial_out pattern 1XX
    ("acme 012345678", [f"@sip_acme_012345678:{HS}"]),  # dial_out 0ZXXXXXXX
    ("acme 0900123", []),  # no pattern allows it
])
async def test_dialpad_forms(stack: Stack, new_user: NewUser, text: str, expected: list[str]) -> None:
    user = await new_user()
    assert await dialpad(user, text) == expected
    assert await dialpad(user, text, "im.vector.protocol.pstn") == expected


async def test_sip_protocol_and_reverse_lookups(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    res = await user.request("GET", "/_matrix/client/v3/thirdparty/user/sip",
                             query={"company": "acme", "extension": "101"})
    assert [r["userid"] for r in res] == [f"@sip_acme_101:{HS}"]
    loc = await user.request("GET", "/_matrix/client/v3/thirdparty/location/sip",
                             query={"company": "acme"})
    assert [r["alias"] for r in loc] == [f"#sip_acme:{HS}"]
    # Reverse lookups, asked of the bridge directly as the homeserver would.
    import aiohttp
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {stack.tokens['hs_token']}"}) as s:
        async with s.get(f"{stack.bridge.url}/_matrix/app/v1/thirdparty/user",
                         params={"userid": f"@sip_acme_101:{HS}"}) as r:
            rev = await r.json()
        async with s.get(f"{stack.bridge.url}/_matrix/app/v1/thirdparty/location",
                         params={"alias": f"#sip_acme:{HS}"}) as r:
            revloc = await r.json()
    assert rev[0]["fields"] == {"company": "acme", "extension": "101"}
    assert revloc[0]["fields"] == {"company": "acme"}


async def test_ghost_profiles(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    prof = await user.request("GET", f"/_matrix/client/v3/profile/{quote(f'@sip_acme_101:{HS}')}")
    assert prof["displayname"] == "Alice Martin (Acme Corp 101)"
    assert prof["avatar_url"].startswith("mxc://")
    prof = await user.request("GET", f"/_matrix/client/v3/profile/{quote(f'@sip_acme:{HS}')}")
    assert prof["displayname"] == "Acme Corp" and prof["avatar_url"].startswith("mxc://")


async def test_public_room_search_finds_the_company(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    res = await user.request("POST", "/_matrix/client/v3/publicRooms",
                             {"filter": {"generic_search_term": "Acme"}})
    rooms = {r.get("canonical_alias"): r for r in res["chunk"]}
    assert f"#sip_acme:{HS}" in rooms, res
    assert rooms[f"#sip_acme:{HS}"]["name"] == "Acme Corp"
    assert rooms[f"#sip_acme:{HS}"]["topic"] == "Widgets since 1950"
    # Also under the bridge's appservice network.
    protocols = await user.request("GET", "/_matrix/client/v3/thirdparty/protocols")
    instance = protocols["sip"]["instances"][0]["instance_id"]
    res = await user.request("POST", "/_matrix/client/v3/publicRooms",
                             {"filter": {"generic_search_term": "acme"},
                              "third_party_instance_id": instance})
    assert f"#sip_acme:{HS}" in [r.get("canonical_alias") for r in res["chunk"]], res


async def test_join_by_alias_then_dm_with_the_company(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    room = await user.join(f"#sip_globex:{HS}")
    dm = await user.wait_invite(timeout=20)
    assert dm != room
    invite_state = user.invites[dm]["invite_state"]["events"]
    me = [e for e in invite_state if e["type"] == "m.room.member" and e["state_key"] == user.user_id]
    assert me[0]["content"].get("is_direct") is True
    assert me[0]["sender"] == f"@sip_globex:{HS}"
    await user.join(dm)
    welcome = await user.wait_for(lambda e: e["room_id"] == dm and e["type"] == "m.room.message")
    assert "call" in welcome["content"]["body"].lower()
    members = await user.joined_members(dm)
    assert sorted(members) == sorted([user.user_id, f"@sip_globex:{HS}"])  # no bot inside


async def test_alias_of_unknown_company_does_not_exist(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    from tests.harness.matrix_user import MatrixError
    with pytest.raises(MatrixError) as e:
        await user.request("GET", f"/_matrix/client/v3/directory/room/{quote(f'#sip_initech:{HS}')}")
    assert e.value.status == 404


async def test_user_invites_a_ghost_directly(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    dm = await user.create_dm(f"@sip_acme_101:{HS}")
    await user.wait_for(lambda e: e["room_id"] == dm and e.get("state_key") == f"@sip_acme_101:{HS}"
                        and e["content"].get("membership") == "join", timeout=20)


async def test_bot_search_and_call(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    bot_room = await user.create_dm(f"@sipbot:{HS}")
    await user.wait_for(lambda e: e["room_id"] == bot_room and e.get("sender") == f"@sipbot:{HS}"
                        and e["type"] == "m.room.message", timeout=20)

    def reply(text: str):  # type: ignore[no-untyped-def]
        return lambda e: (e["room_id"] == bot_room and e.get("sender") == f"@sipbot:{HS}"
                          and text in e["content"].get("body", ""))

    await user.send_text(bot_room, "search acme")
    r = await user.wait_for(reply("match"))
    assert f"@sip_acme:{HS}" in r["content"]["body"]
    assert f"@sip_acme_101:{HS}" in r["content"]["body"]  # Alice is public
    await user.send_text(bot_room, 'call "acme 102"')  # this server's users have level user
    await user.wait_for(reply("Bob Stone"))
    dm = await user.wait_invite()
    await user.join(dm)
    assert f"@sip_acme_102:{HS}" in await user.joined_members(dm)
    await user.send_text(bot_room, "call acme 102")  # reused, not a second DM
    await user.wait_for(reply("You already have"))
    await user.send_text(bot_room, "call initech")
    await user.wait_for(reply("I know no company"))
    await user.send_text(bot_room, "default-company globex")
    await user.wait_for(reply("Globex Corporation"))


def test_registration_lists_our_protocol(stack: Stack) -> None:
    text = stack.bridge.registration_path.read_text()
    assert "- sip" in text
    json.dumps(text)


async def test_profile_changes_and_removed_company(stack: Stack, new_user: NewUser) -> None:
    """Profiles follow the config at start; a removed company keeps its ghost, renamed."""
    import asyncio

    from ruamel.yaml import YAML

    user = await new_user()
    path = stack.bridge.config_path
    original = path.read_text()
    cfg = YAML(typ="safe").load(original)
    del cfg["companies"]["cafe-muller"]
    cfg["companies"]["globex"]["name"] = "Globex Worldwide"
    ghost = quote(f"@sip_cafe-muller:{HS}")

    async def name_of(q: str) -> str:
        return (await user.request("GET", f"/_matrix/client/v3/profile/{q}"))["displayname"]

    async def eventually(q: str, want: str) -> None:
        for _ in range(100):
            if await name_of(q) == want:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{q} is {await name_of(q)!r}, not {want!r}")

    try:
        stack.bridge.stop()
        path.write_text(json.dumps(cfg))
        stack.bridge.start()
        await eventually(ghost, "Café Müller (no longer reachable)")
        await eventually(quote(f"@sip_globex:{HS}"), "Globex Worldwide")
        assert await dialpad(user, "cafe") == []
    finally:
        stack.bridge.stop()
        path.write_text(original)
        stack.bridge.start()
    await eventually(ghost, "Café Müller")
    await eventually(quote(f"@sip_globex:{HS}"), "Globex Corporation")
