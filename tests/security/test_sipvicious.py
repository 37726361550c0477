"""SIPVicious (svmap, svwar, svcrack from PyPI) against a worker on loopback.

The worker has a trunk (its PBX is 127.0.0.2) and a register link whose account, 101, is
registered at a real Kamailio and whose allowed sources are a documentation network: the
scanner on 127.0.0.1 is a stranger to both. What must hold: the worker keeps running; it
answers every request of a stranger with the same stateless 403 (no Server header to
fingerprint, no digest challenge to guess passwords against), so a scan cannot tell an
existing extension or account from a missing one.

A register link *without* ``allowed_sources`` admits only its registrar's addresses (here a
Kamailio on 127.0.0.2): a stranger who names its account or its Contact parameter gets the
same 403 as for a missing user, while a call through the registrar still arrives.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest

from bridge.sip.config import LinkConfig
from bridge.sip.handles import CallHandle
from bridge.sip.pool import WorkerPool
from tests.peers.kamailio import Kamailio
from tests.peers.ports import free_port
from tests.peers.procs import Process
from tests.security.hostile import DOC_NET, INSIDER, STRANGER, UdpPeer, request
from tests.sip.conftest import StartPool, eventually, sip_config, trunk, worker_address
from tests.sip.sippctl import Sipp

REFUSED = "matches no link: 403"


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Kamailio]:
    k = Kamailio(tmp_path / "kamailio", users={"101": "pw101", "matrix": "secret"})
    await asyncio.to_thread(k.start)
    try:
        yield k
    finally:
        await asyncio.to_thread(k.close)


def register_link(k: Kamailio, company: str, user: str, password: str,
                  allowed: tuple[str, ...]) -> LinkConfig:
    return LinkConfig(company=company, mode="register", domain=k.host, server_uri=k.uri,
                      username=user, password=password, allowed_sources=allowed)


async def registered_pool(start_pool: StartPool, *links: LinkConfig) -> WorkerPool:
    pool = await start_pool(sip_config(*links, transports=("udp", "tcp")))
    def registered(company: str) -> bool:
        return pool.link_states()[company].state == "registered"

    for link in links:
        if link.mode == "register":
            await eventually(partial(registered, link.company), 10,
                             f"registration of {link.company}")
    return pool


def udp_port(pool: WorkerPool) -> int:
    return int(worker_address(pool).rsplit(":", 1)[1])


async def run_tool(tmp_path: Path, tool: str, *args: str, seconds: float) -> tuple[int | None, str]:
    """Run ``python -m sipvicious.<tool>`` bound to 127.0.0.1 for at most ``seconds``; stop it
    by its PID if it is still running then. (exit code or None if stopped, its output)"""
    argv = [sys.executable, "-m", f"sipvicious.{tool}", "-b", STRANGER, "-x", STRANGER,
            "-P", str(free_port()), *args]
    proc = Process(f"{tool}-{free_port()}", argv, tmp_path / "sipvicious",
                   env={"HOME": str(tmp_path / "home")})
    proc.start()
    try:
        rc: int | None = await asyncio.to_thread(proc.wait, seconds)
    except TimeoutError:
        rc = None
    finally:
        proc.stop(grace=2.0)
    return rc, proc.log_text()


def refused(caplog: pytest.LogCaptureFixture, method: str) -> int:
    return sum(1 for r in caplog.records
               if f"{method} from {STRANGER} {REFUSED}" in r.getMessage())


async def test_svmap_svwar_svcrack_learn_nothing(
    tmp_path: Path, start_pool: StartPool, pbx: Kamailio, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    pool = await registered_pool(
        start_pool,
        trunk("acme", domain=f"{INSIDER}:5060", allowed_sources=(INSIDER,)),
        register_link(pbx, "bolt", "101", "pw101", (DOC_NET,)))
    port = udp_port(pool)
    pid = pool.workers()[0].pid
    target = ["-p", str(port), STRANGER]

    rc, out = await run_tool(tmp_path, "svmap", *target, seconds=15)
    assert rc == 0, out
    row = re.search(rf"\|\s*127\.0\.0\.1:{port}\s*\|\s*(\S+)\s*\|", out)
    assert row is not None, out  # a SIP device is there: that much any answer shows
    assert row.group(1) == "unknown", out  # but nothing names pjsip or the bridge

    svwar: dict[str, str] = {}
    for method in ("INVITE", "REGISTER"):
        # as a scanner would run it first: svwar's own sanity check gives up
        rc, out = await run_tool(tmp_path, "svwar", "-m", method, "-e", "100-110", "-t", "0.02",
                                 "--maximumtime", "3", *target, seconds=20)
        assert "found nothing" in out and "exists" not in out, out
        assert "authentication request for an unknown extension" in out, out
        # forced: every number gets the same answer as the random one, so nothing is found
        rc, forced = await run_tool(tmp_path, "svwar", "-m", method, "-e", "100-110", "-t",
                                    "0.02", "--maximumtime", "3", "--force", *target, seconds=20)
        assert "found nothing" in forced and "exists" not in forced, forced
        assert "SIP/2.0 403 Forbidden" in forced, forced
        svwar[method] = f"rc={rc}; " + "; ".join(
            line.strip() for line in forced.splitlines()
            if "found nothing" in line or "unknown response" in line)

    # svcrack never gets a challenge, so it never tries a password; it does not stop by
    # itself either: stopped by its PID after 4 s
    before = refused(caplog, "REGISTER")
    rc, out = await run_tool(tmp_path, "svcrack", "-u", "101", "-r", "1000-1100", "-t", "0.02",
                             *target, seconds=4)
    attempts = refused(caplog, "REGISTER") - before
    assert "The password for" not in out and "Does not seem to require" not in out, out
    assert attempts > 0

    worker = pool.workers()[0]
    assert worker.alive and worker.pid == pid and worker.restarts == 0, worker
    print("SIPVICIOUS", {"svmap_user_agent": row.group(1), "svwar": svwar,
                         "svcrack_rc": rc, "svcrack_requests_refused": attempts,
                         "worker": (worker.pid, worker.alive, worker.restarts)})


async def test_existing_and_missing_extensions_get_the_same_answer(
    start_pool: StartPool, pbx: Kamailio
):
    pool = await registered_pool(
        start_pool,
        trunk("acme", domain=f"{INSIDER}:5060", allowed_sources=(INSIDER,)),
        register_link(pbx, "bolt", "101", "pw101", (DOC_NET,)))
    port = udp_port(pool)
    # 100/101/102: the trunk's main line and extensions; 101@127.0.0.1 is also bolt's
    # registered account; alice=example.org a Matrix user; the rest exist nowhere
    users = ["100", "101", "102", "alice=example.org", "103", "999", "nobody", "admin"]
    answers: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}

    def probe() -> None:
        with UdpPeer(STRANGER) as peer:
            for method in ("OPTIONS", "INVITE", "REGISTER", "MESSAGE"):
                for user in [*users, "101;bridge-link=bolt"]:
                    uri = f"sip:{user}@127.0.0.1:{port}"
                    to = f"<sip:{user.split(';')[0]}@127.0.0.1>"
                    if method == "REGISTER":
                        uri = f"sip:127.0.0.1:{port}"
                    n = len(peer.received)
                    peer.ask(request(method, uri, sport=peer.port, to=to,
                                     content_type="text/plain" if method == "MESSAGE" else None,
                                     body="hi" if method == "MESSAGE" else ""), port)
                    got = peer.received[n:]
                    assert len(got) == 1, (method, user, got)
                    head = got[0].split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
                    names = tuple(sorted(h.split(":", 1)[0].lower() for h in head[1:]))
                    answers[(method, user)] = (head[0], names)

    await asyncio.to_thread(probe)
    distinct = set(answers.values())
    assert len(distinct) == 1, answers
    line, names = distinct.pop()
    assert line == "SIP/2.0 403 Forbidden"
    assert not {"www-authenticate", "proxy-authenticate", "server", "user-agent"} & set(names)
    print("ENUMERATION", {"requests": len(answers), "answer": line, "headers": names})


@pytest.fixture
async def pbx_apart(tmp_path: Path) -> AsyncIterator[Kamailio]:
    """The PBX apart from the scanner: Kamailio on 127.0.0.2 (the stranger is 127.0.0.1)."""
    k = Kamailio(tmp_path / "kamailio-2", users={"matrix": "secret"}, host=INSIDER)
    await asyncio.to_thread(k.start)
    try:
        yield k
    finally:
        await asyncio.to_thread(k.close)


async def test_register_link_without_allowed_sources_admits_only_its_registrar(
    tmp_path: Path, pbx_apart: Kamailio, start_pool: StartPool,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO)
    k = pbx_apart
    calls: list[CallHandle] = []

    async def on_call(handle: CallHandle) -> None:
        calls.append(handle)
        await handle.reject(486, "Busy Here")

    pool = await registered_pool(start_pool, register_link(k, "open", "matrix", "secret", ()))
    pool.on_incoming_call = on_call
    port = udp_port(pool)

    def probe() -> dict[tuple[str, str], tuple[str, tuple[str, ...]]]:
        out: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
        with UdpPeer(STRANGER) as peer:
            for method in ("OPTIONS", "INVITE", "MESSAGE"):
                for name, uri, to in (
                    ("account", f"sip:matrix@127.0.0.1:{port}", f"<sip:matrix@{INSIDER}>"),
                    ("contact-param", f"sip:matrix@127.0.0.1:{port};bridge-link=open", None),
                    ("missing", f"sip:nobody@127.0.0.1:{port}", None),
                ):
                    n = len(peer.received)
                    status = peer.ask(request(
                        method, uri, sport=peer.port, to=to,
                        content_type="text/plain" if method == "MESSAGE" else None,
                        body="hi" if method == "MESSAGE" else ""), port)
                    got = peer.received[n:]
                    assert status is not None and len(got) == 1, (method, name, got)
                    head = got[0].split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
                    names = tuple(sorted(h.split(":", 1)[0].lower() for h in head[1:]))
                    out[(method, name)] = (head[0], names)
        return out

    answers = await asyncio.to_thread(probe)
    print("REGISTER_LINK_WITHOUT_ALLOWED_SOURCES", answers)
    assert set(answers.values()) == {answers[("OPTIONS", "missing")]}, answers
    assert answers[("OPTIONS", "missing")][0] == "SIP/2.0 403 Forbidden"
    await eventually(lambda: refused(caplog, "MESSAGE") == 3, 5, "the refusals logged")
    assert refused(caplog, "INVITE") == 3
    assert calls == []

    # the registrar is admitted: a call to the account through Kamailio arrives
    caller = Sipp(tmp_path / "via-registrar", "uac_rejected", remote=k.address,
                  service="matrix", keys={"caller": "555", "caller_name": "Via PBX"},
                  template={"STATUS": "486"}).start()
    assert await caller.done(15) == 0, caller.explain()
    assert len(calls) == 1
    info = calls[0].info
    assert info is not None and info.company == "open"
    assert info.source.startswith(f"{INSIDER}:"), info.source
