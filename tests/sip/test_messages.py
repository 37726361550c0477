"""SIP MESSAGE both ways with sipp: delivery outcome, content type, size limit, sources."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.sip.errors import MessageTooLarge
from bridge.sip.events import IncomingMessage
from tests.sip.conftest import StartPool, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp

TEXT = "Grüße aus Matrix ✓"


async def test_message_received_for_company(tmp_path: Path, start_pool: StartPool):
    got: asyncio.Queue[IncomingMessage] = asyncio.Queue()
    pool = await start_pool(sip_config(trunk()), on_message=got.put)
    sender = Sipp(tmp_path, "uac_message", remote=worker_address(pool), service="alice=example.org",
                  keys={"caller": "101", "caller_name": "Alice Martin", "text": TEXT},
                  template={"STATUS": "200"}).start()
    msg = await asyncio.wait_for(got.get(), 10)
    assert (msg.company, msg.from_user, msg.from_display) == ("acme", "101", "Alice Martin")
    assert msg.to_user == "alice=example.org"
    assert msg.text.strip() == TEXT
    assert msg.content_type.lower().startswith("text/plain")
    assert msg.source == sender.address
    assert await sender.done(10) == 0, sender.explain()


async def test_message_from_foreign_source_gets_403(tmp_path: Path, start_pool: StartPool):
    got: list[IncomingMessage] = []
    pool = await start_pool(sip_config(trunk(allowed_sources=("198.51.100.0/24",))),
                            on_message=got.append)
    sender = Sipp(tmp_path, "uac_message", remote=worker_address(pool), service="alice",
                  keys={"caller": "101", "caller_name": "Mallory", "text": "hi"},
                  template={"STATUS": "403"}).start()
    assert await sender.done(10) == 0, sender.explain()
    await asyncio.sleep(0.2)
    assert got == []


@pytest.mark.parametrize(("status", "reason"), [(200, "OK"), (404, "Not Found")])
async def test_message_sent_with_outcome(tmp_path: Path, start_pool: StartPool, status: int,
                                         reason: str):
    uas = Sipp(tmp_path, "uas_message", template={"STATUS": str(status), "REASON": reason})
    uas.start()
    pool = await start_pool(sip_config(trunk(domain=uas.address)))
    result = await pool.send_message("acme", "101", TEXT, from_user="alice=example.org",
                                     from_display="Alice")
    assert (result.status, result.reason) == (status, reason)
    assert result.delivered == (status == 200)
    assert await uas.done(10) == 0, uas.explain()
    msgs = uas.messages()
    assert '"Alice" <sip:alice=example.org@127.0.0.1>' in msgs
    assert TEXT in msgs


async def test_message_over_the_size_limit_is_refused(start_pool: StartPool):
    pool = await start_pool(sip_config(trunk(domain="127.0.0.1:9"), message_max_bytes=64))
    with pytest.raises(MessageTooLarge, match="65 bytes; the limit is 64 bytes"):
        await pool.send_message("acme", "101", "x" * 65, from_user="alice=example.org")


@pytest.mark.parametrize(("verdict", "expected"), [(404, "404"), (None, "200"), ("fail", "500")])
async def test_the_pbx_gets_the_controllers_verdict(tmp_path: Path, start_pool: StartPool,
                                                    verdict: object, expected: str):
    """The worker holds an admitted MESSAGE (pjsua would have said 200 at once) and answers
    with what the controller's handler returns, after it returned."""
    async def handler(msg: IncomingMessage) -> int | None:
        await asyncio.sleep(1.5)  # the UAC retransmits meanwhile; pjsip absorbs it
        if verdict == "fail":
            raise RuntimeError("the homeserver is down")
        return verdict  # type: ignore[return-value]

    pool = await start_pool(sip_config(trunk()), on_message=handler)
    started = asyncio.get_running_loop().time()
    sender = Sipp(tmp_path, "uac_message", remote=worker_address(pool), service="bob=example.org",
                  keys={"caller": "101", "caller_name": "Alice", "text": "hello"},
                  template={"STATUS": expected}).start()
    assert await sender.done(15) == 0, sender.explain()
    assert asyncio.get_running_loop().time() - started >= 1.4
    received = [m for m in sender.messages().split("\n") if m.startswith("SIP/2.0 ")]
    assert received and all(line.startswith(f"SIP/2.0 {expected}") for line in received), received
