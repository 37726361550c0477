"""The hs_token guards every appservice request; processed transactions are never handled
twice, also after a restart of the bridge."""

from __future__ import annotations

import asyncio
import secrets

import aiohttp

from tests.conftest import NewUser, Stack


async def put_txn(stack: Stack, txn_id: str, events: list[dict], token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.put(
        f"{stack.bridge.url}/_matrix/app/v1/transactions/{txn_id}",
        json={"events": events}, headers=headers,
    ) as r:
        return r.status, await r.json()


async def test_missing_token_is_401(stack: Stack) -> None:
    status, body = await put_txn(stack, "t-missing", [], None)
    assert status == 401 and body["errcode"] == "M_UNAUTHORIZED"


async def test_wrong_token_is_403(stack: Stack) -> None:
    status, body = await put_txn(stack, "t-wrong", [], "not-the-token")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    # Same length as the real one, one character off.
    real = stack.tokens["hs_token"]
    status, body = await put_txn(stack, "t-wrong2", [], real[:-1] + ("A" if real[-1] != "A" else "B"))
    assert status == 403


async def test_token_checked_on_queries_and_query_param_accepted(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{stack.bridge.url}/_matrix/app/v1/users/@sip_x:bridge.test") as r:
            assert r.status == 401
        async with s.get(f"{stack.bridge.url}/_matrix/app/v1/rooms/%23sip_x:bridge.test",
                         params={"access_token": "nope"}) as r:
            assert r.status == 403
        async with s.put(f"{stack.bridge.url}/_matrix/app/v1/transactions/t-q",
                         params={"access_token": stack.tokens["hs_token"]},
                         json={"events": []}) as r:
            assert r.status == 200


async def test_transaction_dedup_survives_restart(stack: Stack, new_user: NewUser) -> None:
    user = await new_user()
    room = await user.create_dm("@sipbot:bridge.test")
    await user.wait_for(lambda e: e["room_id"] == room and e["type"] == "m.room.member"
                        and e.get("state_key") == "@sipbot:bridge.test"
                        and e["content"].get("membership") == "join")
    nonce = secrets.token_hex(4)

    def fake_command(event_id: str) -> dict:
        return {"type": "m.room.message", "room_id": room, "sender": user.user_id,
                "event_id": event_id, "origin_server_ts": 0,
                "content": {"msgtype": "m.text", "body": "ping"}}

    def pongs() -> int:
        return sum(1 for e in user.events if e["room_id"] == room
                   and e.get("sender") == "@sipbot:bridge.test"
                   and "Pong" in e.get("content", {}).get("body", ""))

    txn = f"dedup-{nonce}"
    hs = stack.tokens["hs_token"]
    assert (await put_txn(stack, txn, [fake_command(f"$a{nonce}")], hs))[0] == 200
    await user.wait_for(lambda e: e["room_id"] == room and "Pong" in e["content"].get("body", ""))
    assert pongs() == 1
    # The homeserver retries the same transaction: acknowledged, not handled again.
    assert (await put_txn(stack, txn, [fake_command(f"$a{nonce}")], hs))[0] == 200
    # A new transaction repeating an already handled event is not handled again either.
    assert (await put_txn(stack, txn + "-b", [fake_command(f"$a{nonce}")], hs))[0] == 200
    await asyncio.sleep(2)
    assert pongs() == 1
    # After a restart the bridge still knows the transaction.
    stack.bridge.stop()
    stack.bridge.start()
    assert (await put_txn(stack, txn, [fake_command(f"$a{nonce}")], hs))[0] == 200
    await asyncio.sleep(2)
    assert pongs() == 1
    # A genuinely new transaction is still handled.
    assert (await put_txn(stack, txn + "-c", [fake_command(f"$c{nonce}")], hs))[0] == 200
    await user.wait_for(lambda e: pongs() == 2, timeout=15)


async def test_garbage_transaction_gets_a_clear_error(stack: Stack) -> None:
    hs = stack.tokens["hs_token"]
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{stack.bridge.url}/_matrix/app/v1/transactions/garbage",
                         data=b"{not json", headers={"Authorization": f"Bearer {hs}"}) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_NOT_JSON"
        async with s.put(f"{stack.bridge.url}/_matrix/app/v1/transactions/garbage2",
                         json={"events": "nope"}, headers={"Authorization": f"Bearer {hs}"}) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_BAD_JSON"
        # Events of the wrong shape are skipped; the bridge keeps answering.
        async with s.put(f"{stack.bridge.url}/_matrix/app/v1/transactions/garbage3",
                         json={"events": [1, "x", {"type": 5}, {}]},
                         headers={"Authorization": f"Bearer {hs}"}) as r:
            assert r.status == 200
        async with s.get(f"{stack.bridge.url}/health") as r:
            assert r.status == 200
