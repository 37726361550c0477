"""The provisioning API: shared secret checked, companies, links, calls and call records
(JSON and a CSV export of a known set of calls)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import aiohttp

from tests.calls.test_bridged_calls import HS
from tests.conftest import NewUser, Stack
from tests.harness.call_client import CallClient, CallState
from tests.harness.dm_calls import dm_with
from tests.peers.sipp import Sipp

P = "/_matrix/provision/v1"


async def get(stack: Stack, path: str, token: str | None = "ok", **params: str) -> tuple[int, str]:
    secret = stack.tokens["provisioning_secret"] if token == "ok" else token
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    async with aiohttp.ClientSession() as s, s.get(stack.bridge.url + P + path,
                                                   headers=headers, params=params) as r:
        return r.status, await r.text()


async def test_secret_is_required(stack: Stack) -> None:
    status, body = await get(stack, "/companies", token=None)
    assert status == 401 and "M_UNAUTHORIZED" in body
    status, body = await get(stack, "/companies", token="wrong")
    assert status == 403 and "M_FORBIDDEN" in body
    status, body = await get(stack, "/companies/initech")
    assert status == 404 and "M_NOT_FOUND" in body


async def test_companies_links_and_call_records_csv(stack: Stack, new_user: NewUser,
                                                    tmp_path: Path) -> None:
    import json

    status, body = await get(stack, "/companies/acme")
    acme = json.loads(body)
    assert status == 200 and acme["mxid"] == f"@sip_acme:{HS}" and acme["main_line"] == "100"
    assert {e["number"] for e in acme["extensions"]} == {"101", "102"}
    status, body = await get(stack, "/links")
    links = {x["company"]: x for x in json.loads(body)["links"]}
    assert links["acme"]["state"] == "registered" and links["trunkco"]["state"] == "trunk"

    # A known set of calls: one busy, one completed, by a fresh user.
    user = await new_user("records")
    room = await dm_with(user, f"@sip_trunkco_201:{HS}")
    for peer in (Sipp.uas_reject(tmp_path, code=486, local_port=stack.trunk_pbx_port),
                 Sipp.uas_echo(tmp_path, local_port=stack.trunk_pbx_port)):
        peer.start()
        client = CallClient(user.transport(room))
        try:
            await client.place_call()
            await client.wait_for_state(CallState.CONNECTED, CallState.ENDED, timeout=30)
            if client.state == CallState.CONNECTED:
                await client.hangup()
        finally:
            await client.close()
            peer.stop()
    import asyncio

    for _ in range(50):  # the last call's record is closed a moment after its hangup
        status, body = await get(stack, "/call-records", user=user.user_id, format="csv")
        rows = list(csv.DictReader(io.StringIO(body)))
        if rows and rows[0]["outcome"]:
            break
        await asyncio.sleep(0.1)
    assert status == 200
    assert [r["outcome"] for r in rows] == ["completed", "busy"]  # newest first
    assert all(r["company"] == "trunkco" and r["extension"] == "201" for r in rows)
    assert rows[0]["answered_at"].endswith("Z") and rows[0]["sip_call_id"]
    assert rows[1]["sip_status"] == "486" and rows[1]["answered_at"] == ""
    status, body = await get(stack, "/call-records", user=user.user_id, outcome="busy")
    assert [r["outcome"] for r in json.loads(body)["records"]] == ["busy"]
    status, body = await get(stack, "/call-records", since="notanumber")
    assert status == 400 and "M_INVALID_PARAM" in body
