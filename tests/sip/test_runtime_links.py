"""PBX links added, replaced and removed while the workers run (companies linked at run time).

Against real peers: a Kamailio registrar for a register link (the REGISTER and the
unregistration are read back from Kamailio's location table) and a sipp UAC for a trunk
(its INVITE is refused with 403 before the link exists and after it is gone).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.sip.config import LinkConfig
from bridge.sip.handles import CallHandle
from tests.peers.kamailio import Kamailio
from tests.sip.conftest import StartPool, eventually, sip_config, trunk
from tests.sip.test_inbound_calls import uac


async def test_register_link_added_replaced_and_removed_at_run_time(
    kamailio: Kamailio, start_pool: StartPool
):
    pool = await start_pool(sip_config(trunk("other"), workers=2))
    link = LinkConfig(company="late", mode="register", domain="127.0.0.1",
                      server_uri=kamailio.uri, username="matrix", password="wrong")
    await pool.set_link(link)
    failed = await eventually(
        lambda: (s := pool.link_states().get("late")) is not None and s.state == "failed" and s,
        10, "a failed registration with the wrong password")
    assert failed.status in (401, 403)
    # Fix the password: the link is replaced and registers.
    await pool.set_link(LinkConfig(company="late", mode="register", domain="127.0.0.1",
                                   server_uri=kamailio.uri, username="matrix",
                                   password="secret"))
    await eventually(lambda: pool.link_states()["late"].state == "registered", 10,
                     "registration after the fix")
    contacts = kamailio.wait_registered("matrix")
    assert any("bridge-link=late" in c for c in contacts), contacts
    await pool.remove_link("late")
    assert "late" not in pool.link_states()
    await eventually(lambda: kamailio.registered_contacts("matrix") == [], 10,
                     "the unregistration at Kamailio")
    assert all(w.alive and w.restarts == 0 for w in pool.workers())


async def test_trunk_link_added_then_removed_at_run_time(tmp_path: Path, start_pool: StartPool):
    calls: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.reject(486)
        await calls.put(handle)

    pool = await start_pool(sip_config(trunk("other", allowed_sources=("192.0.2.1",))),
                            on_incoming_call=on_call)
    before = uac(tmp_path / "before", pool, "uac_rejected", status="403").start()
    assert await before.done(10) == 0, before.explain()
    await pool.set_link(trunk("acme"))
    during = uac(tmp_path / "during", pool, "uac_rejected", status="486").start()
    call = await asyncio.wait_for(calls.get(), 10)
    assert call.company == "acme"
    assert await during.done(10) == 0, during.explain()
    await pool.remove_link("acme")
    after = uac(tmp_path / "after", pool, "uac_rejected", status="403").start()
    assert await after.done(10) == 0, after.explain()
