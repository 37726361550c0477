"""PBX links in register mode against a real Kamailio registrar with digest auth."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from bridge.sip.config import LinkConfig
from bridge.sip.events import LinkStatus
from tests.peers.kamailio import Kamailio
from tests.sip.conftest import StartPool, eventually, sip_config


def register_link(k: Kamailio, password: str = "secret", **kwargs: object) -> LinkConfig:
    return LinkConfig(company="acme", mode="register", domain="127.0.0.1", server_uri=k.uri,
                      username="matrix", password=password, **kwargs)  # type: ignore[arg-type]


async def test_registers_and_unregisters_on_stop(kamailio: Kamailio, start_pool: StartPool):
    seen: list[LinkStatus] = []
    pool = await start_pool(sip_config(register_link(kamailio)), on_link_state=seen.append)
    status = await eventually(
        lambda: pool.link_states()["acme"].state == "registered" and pool.link_states()["acme"],
        10, "registration")
    assert status.status == 200 and status.expires_s > 0
    contacts = kamailio.wait_registered("matrix")
    assert any("bridge-link=acme" in c and "127.0.0.1" in c for c in contacts), contacts
    await pool.stop()
    assert kamailio.registered_contacts("matrix") == []  # REGISTER with expires 0 was sent
    assert [s.state for s in seen][-1] == "unregistered"


async def test_wrong_password_fails_with_status_and_backs_off(
    kamailio: Kamailio, start_pool: StartPool
):
    pool = await start_pool(sip_config(register_link(kamailio, password="wrong")))
    failed = await eventually(
        lambda: pool.link_states()["acme"].state == "failed" and pool.link_states()["acme"],
        10, "failed registration")
    assert failed.status == 401, failed
    assert failed.reason
    assert failed.retry_in_s == 1.0
    second = await eventually(
        lambda: (s := pool.link_states()["acme"]).state == "failed" and s.retry_in_s == 2.0
        and s, 10, "second failure with a doubled back-off")
    assert second.status == 401
    assert kamailio.registered_contacts("matrix") == []


async def test_link_recovers_when_registrar_comes_back(tmp_path: Path, start_pool: StartPool):
    k = Kamailio(tmp_path / "late-kamailio", users={"matrix": "secret"})
    try:
        link = register_link(k, transport="tcp")
        pool = await start_pool(sip_config(link, transports=("udp", "tcp")))
        failed = await eventually(
            lambda: pool.link_states()["acme"].state == "failed" and pool.link_states()["acme"],
            10, "failure while the registrar is down")
        assert failed.status >= 400
        await asyncio.to_thread(k.start)
        await eventually(lambda: pool.link_states()["acme"].state == "registered", 15,
                         "registration after the registrar came back")
        contacts = k.wait_registered("matrix")
        assert any("transport=tcp" in c.lower() for c in contacts), contacts
    finally:
        k.close()


async def test_tcp_registration_renewed_after_registrar_restart(
    tmp_path: Path, start_pool: StartPool
):
    """A restarted registrar has forgotten our binding; the closed TCP connection makes the
    link register again at once instead of at the next refresh (minutes later)."""
    k = Kamailio(tmp_path / "restarting", users={"matrix": "secret"})
    k.start()
    try:
        pool = await start_pool(sip_config(register_link(k, transport="tcp"),
                                           transports=("udp", "tcp")))
        await eventually(lambda: pool.link_states()["acme"].state == "registered", 10,
                         "registration")
        k.wait_registered("matrix")
        await asyncio.to_thread(k.stop)
        await asyncio.to_thread(k.start)
        assert k.registered_contacts("matrix") == []
        contacts = await asyncio.to_thread(k.wait_registered, "matrix", 10.0)
        assert any("bridge-link=acme" in c for c in contacts), contacts
        await eventually(lambda: pool.link_states()["acme"].state == "registered", 5,
                         "registered state")
    finally:
        k.close()


async def test_registration_refreshed_before_expiry(kamailio: Kamailio, start_pool: StartPool):
    pool = await start_pool(sip_config(register_link(kamailio, register_expires_s=10)))
    await eventually(lambda: pool.link_states()["acme"].state == "registered", 10,
                     "registration")

    def registers() -> int:
        return len(re.findall(r"REGISTER matrix from", kamailio.log_text()))

    first = registers()
    await eventually(lambda: registers() > first, 9, "a refresh within the 10 s expiry")
    assert pool.link_states()["acme"].state == "registered"
    assert kamailio.registered_contacts("matrix")
