"""Companies linked, edited and unlinked at run time: bot commands and the provisioning API,
against the session's real Synapse and a sipp PBX; and the stored companies after a restart.

No restart happens between a change and its use: the new company is called, found on the
dial pad and texted right after the command's reply.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.calls.test_bridged_calls import HS, _ask, _bot_dm
from tests.conftest import NewUser, Stack, fixed_user
from tests.harness.bridge_proc import BridgeProc
from tests.harness.call_client import CallClient, CallState
from tests.harness.dm_calls import dm_with, notice_in
from tests.peers.ports import free_port
from tests.peers.sipp import Sipp

P = "/_matrix/provision/v1"
#: a PBX password given at run time: it must never reach the logs (checked below and by the
#: session's secret scan through the stack's log).
RUNTIME_SECRET = "pizza-pbx-secret-7d1e"


async def api(url: str, token: str, method: str, path: str,
              body: Any = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as s, s.request(method, url + P + path, json=body,
                                                       headers=headers) as r:
        return r.status, await r.json()


async def displayname(user: Any, mxid: str) -> str:
    body = await user.request("GET", f"/_matrix/client/v3/profile/{quote(mxid)}")
    return str(body.get("displayname"))


async def eventually(check: Any, timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.2)


async def connected_call(caller: Any, room: str, start_pbx: Any) -> tuple[CallClient, Sipp]:
    """A connected call from ``room`` to a PBX ``start_pbx()`` starts. The stack's single
    worker may still hold earlier tests' calls whose BYE or CANCEL went unanswered (pjsua
    keeps such a call up to 32 s): then the bridge refuses with "too many calls right now",
    and one retry is made after that time, with a fresh PBX."""
    for attempt in (1, 2):
        pbx = start_pbx()
        client = CallClient(caller.transport(room))
        since = len(caller.events)
        await client.place_call()
        try:
            await client.wait_for_state(CallState.CONNECTED, timeout=30)
            return client, pbx
        except TimeoutError:
            await client.close()
            pbx.stop()
            if attempt == 2:
                raise
            await caller.wait_for(lambda e: e["room_id"] == room and "too many calls right now"
                                  in e.get("content", {}).get("body", ""),
                                  timeout=10, start=since)
            await asyncio.sleep(33)
    raise AssertionError("unreachable")


async def test_admin_links_calls_and_unlinks_a_company_by_command(
    stack: Stack, new_user: NewUser, tmp_path: Path
) -> None:
    pbx_port = free_port()
    caller = await new_user("pizzafan")
    boss = await fixed_user(stack, "boss")
    try:
        bot = await _bot_dm(boss)
        # Wrong input gets the key and the usage line; non-admins and config companies refused.
        reply = await _ask(boss, bot, 'link pizza name="Pizza Roma" main_line=100', "pbx")
        assert "companies.pizza.pbx: required key is missing" in reply and "Usage:" in reply
        reply = await _ask(boss, bot, "link pizza name", "KEY=VALUE")
        assert "Usage: link COMPANY" in reply
        reply = await _ask(boss, bot, 'edit acme name="Hacked"', "config file")
        assert "acme comes from the config file" in reply
        caller_bot = await _bot_dm(caller)
        assert "needs the 'admin' permission" in await _ask(
            caller, caller_bot, "unlink pizza", "admin")

        reply = await _ask(
            boss, bot,
            f'link pizza name="Pizza Roma" main_line=100 pbx.mode=trunk '
            f"pbx.registrar=sip:127.0.0.1:{pbx_port} pbx.allowed_sources=127.0.0.1 "
            f"pbx.username=bridge pbx.password={RUNTIME_SECRET}", "Pizza")
        assert reply.startswith("Linked Pizza Roma (pizza)"), reply
        assert f"@sip_pizza:{HS}" in reply
        reply = await _ask(boss, bot, 'extension pizza 101 "Mario Rossi" public', "Mario")
        assert f"@sip_pizza_101:{HS}" in reply
        assert await displayname(caller, f"@sip_pizza_101:{HS}") == "Mario Rossi (Pizza Roma 101)"

        # Found by name on the dial pad, and called at once.
        found = await caller.request("GET", "/_matrix/client/v3/thirdparty/user/m.protocol.pstn",
                                     query={"m.id.phone": "pizza roma"})
        assert found and found[0]["userid"] == f"@sip_pizza:{HS}", found
        room = await dm_with(caller, f"@sip_pizza:{HS}")
        attempts = iter(("first", "retry"))
        client, pbx = await connected_call(caller, room, lambda: Sipp.uas_echo(
            tmp_path / next(attempts), local_port=pbx_port).start())
        try:
            # Unlinking ends the call with a notice and says so on the ghost.
            reply = await _ask(boss, bot, "unlink pizza", "Unlinked")
            await client.wait_for_state(CallState.ENDED, timeout=15)
            await notice_in(caller, room, "Pizza Roma was unlinked")
        finally:
            await client.close()
            pbx.stop()
        assert any(m.start_line.startswith("INVITE sip:100@127.0.0.1") for m in pbx.messages())
        assert (await displayname(caller, f"@sip_pizza:{HS}")).endswith("no longer reachable)")
        found = await caller.request("GET", "/_matrix/client/v3/thirdparty/user/m.protocol.pstn",
                                     query={"m.id.phone": "pizza"})
        assert found == []
    finally:
        await boss.close()
    assert RUNTIME_SECRET not in stack.bridge.log_text()


async def test_provisioning_api_creates_updates_and_deletes(stack: Stack,
                                                           new_user: NewUser) -> None:
    url, token = stack.bridge.url, stack.tokens["provisioning_secret"]
    company = {"slug": "deli", "name": "Deli Two", "main_line": "200",
               "pbx": {"mode": "trunk", "registrar": "sip:127.0.0.1:5999",
                       "allowed_sources": ["127.0.0.1"], "username": "u",
                       "password": RUNTIME_SECRET}}
    status, body = await api(url, token, "POST", "/companies", company)
    assert status == 201, body
    assert body["source"] == "database" and body["mxid"] == f"@sip_deli:{HS}"
    assert body["settings"]["pbx"]["password"] == "***"
    status, body = await api(url, token, "POST", "/companies", company)
    assert status == 409 and body["errcode"] == "M_EXISTS"
    status, body = await api(url, token, "POST", "/companies",
                             {"slug": "bad", "name": "B", "main_line": "1",
                              "pbx": {"registrar": "not-a-uri"}})
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
    assert "companies.bad.pbx.registrar" in body["error"]
    status, body = await api(url, token, "PATCH", "/companies/acme", {"name": "X"})
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"

    status, body = await api(url, token, "PATCH", "/companies/deli",
                             {"name": "Deli Three", "description": "Sandwiches"})
    assert status == 200 and body["name"] == "Deli Three", body
    status, body = await api(url, token, "PUT", "/companies/deli/extensions/201",
                             {"name": "Ann Counter", "public": True})
    assert status == 200 and body["extensions"][0]["mxid"] == f"@sip_deli_201:{HS}", body
    user = await new_user("deli")
    assert await eventually(lambda: _named(user, f"@sip_deli_201:{HS}",
                                           "Ann Counter (Deli Three 201)"))
    status, body = await api(url, token, "GET", "/links")
    assert {"company": "deli", "mode": "trunk"}.items() <= next(
        x for x in body["links"] if x["company"] == "deli").items()
    status, body = await api(url, token, "DELETE", "/companies/deli/extensions/201")
    assert status == 200 and body["extensions"] == []
    status, body = await api(url, token, "DELETE", "/companies/deli/extensions/201")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await api(url, token, "DELETE", "/companies/deli")
    assert status == 200
    status, body = await api(url, token, "GET", "/companies/deli")
    assert status == 404
    assert RUNTIME_SECRET not in stack.bridge.log_text()


async def _named(user: Any, mxid: str, name: str) -> bool:
    return await displayname(user, mxid) == name


async def test_companies_linked_at_run_time_survive_a_restart(tmp_path: Path) -> None:
    """A bridge without a homeserver (the API and the SIP side still run)."""
    bridge = BridgeProc(tmp_path / "b", f"http://127.0.0.1:{free_port()}", HS, overrides={
        "companies": {}, "bridge": {"default_company": None}, "sip": {"workers": 1},
    })
    tokens = bridge.generate()
    bridge.start()
    try:
        status, body = await api(bridge.url, tokens["provisioning_secret"], "POST",
                                 "/companies", {"slug": "kept", "name": "Kept Ltd",
                                                "main_line": "1",
                                                "pbx": {"mode": "trunk",
                                                        "registrar": "sip:127.0.0.1:5998",
                                                        "allowed_sources": ["127.0.0.1"]}})
        assert status == 201, body
        bridge.stop()
        bridge.start()
        status, body = await api(bridge.url, tokens["provisioning_secret"], "GET",
                                 "/companies/kept")
        assert status == 200 and body["source"] == "database" and body["name"] == "Kept Ltd"
        status, body = await api(bridge.url, tokens["provisioning_secret"], "GET", "/links")
        assert any(x["company"] == "kept" and x["state"] == "trunk" for x in body["links"])
        assert "1 company(ies) linked at run time: kept" in bridge.log_text()
    finally:
        bridge.stop()
    print(json.dumps({"restart": "ok"}))
