"""Shared fixtures: a real Synapse with the bridge's generated registration, the bridge
process, and Matrix test users. Everything runs on 127.0.0.1 and is stopped by PID."""

from __future__ import annotations

import copy
import itertools
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.bridge_proc import TEST_COMPANIES, BridgeProc
from tests.harness.matrix_user import MatrixUser, login
from tests.harness.synapse import SERVER_NAME, Synapse
from tests.peers.kamailio import Kamailio
from tests.peers.ports import free_port

POSTGRES_DSN = os.environ.get("BRIDGE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")


@dataclass
class Stack:
    synapse: Synapse
    bridge: BridgeProc
    tokens: dict[str, str]
    kamailio: Kamailio  # acme's PBX: registrar and proxy; extensions 101, 102 register here
    sip_port: int  # the bridge's SIP port (UDP and TCP)
    metrics_port: int
    trunk_pbx_port: int  # where trunkco's PBX (a sipp the test starts) must listen

    @property
    def sip_address(self) -> str:
        return f"127.0.0.1:{self.sip_port}"


ACME_PBX_USERS = {"matrix": "acmepbxsecret", "101": "pw101", "102": "pw102"}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Synapse + Kamailio (acme's PBX) + the bridge (SQLite), shared by a session's tests."""
    root = tmp_path_factory.mktemp("stack")
    kamailio = Kamailio(root / "kamailio", users=ACME_PBX_USERS)
    kamailio.start()
    sip_port = free_port()
    trunk_port = free_port()
    synapse = Synapse(root / "synapse", registrations=[])
    companies = copy.deepcopy(TEST_COMPANIES)
    companies["acme"]["pbx"]["registrar"] = kamailio.uri
    companies["trunkco"]["pbx"]["registrar"] = f"sip:127.0.0.1:{trunk_port}"
    metrics_port = free_port()
    bridge = BridgeProc(root / "bridge", synapse.url, SERVER_NAME, overrides={
        "companies": companies,
        "metrics": {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
        # JSON lines, so tests can check each call's lines carry its correlation ID.
        "logging": {"level": "DEBUG", "levels": {"mau": "INFO", "aiosqlite": "INFO"},
                    "format": "json"},
        "sip": {"listen": {"udp": f"127.0.0.1:{sip_port}", "tcp": f"127.0.0.1:{sip_port}"},
                "rtp_ports": "40000-40999"},
    })
    tokens = bridge.generate()
    synapse.registrations = [bridge.registration_path]
    try:
        synapse.start()
        bridge.start()
        yield Stack(synapse, bridge, tokens, kamailio, sip_port, metrics_port, trunk_port)
    finally:
        bridge.stop()
        synapse.stop()
        kamailio.close()
    # Secrets never reach the logs: checked over everything the bridge logged in this run
    # (at DEBUG level, every restart and every worker included).
    secrets_ = [tokens["as_token"], tokens["hs_token"], tokens["provisioning_secret"],
                ACME_PBX_USERS["matrix"]]
    logs = bridge.log_text()
    leaked = [s[:6] + "…" for s in secrets_ if s in logs]
    assert not leaked, f"secrets found in the bridge's logs: {leaked}"


_counter = itertools.count()

NewUser = Callable[..., Awaitable[MatrixUser]]


@pytest.fixture
async def new_user(stack: Stack) -> AsyncIterator[NewUser]:
    """Factory: a freshly registered, logged-in and syncing Matrix user."""
    made: list[MatrixUser] = []

    async def make(prefix: str = "user") -> MatrixUser:
        local = f"{prefix}{next(_counter)}{secrets.token_hex(3)}"
        password = secrets.token_hex(8)
        stack.synapse.register_user(local, password)
        user = await login(stack.synapse.url, f"@{local}:{SERVER_NAME}", password)
        user.start_sync()
        made.append(user)
        return user

    yield make
    for u in made:
        await u.close()


async def fixed_user(stack: Stack, localpart: str) -> MatrixUser:
    """A user with a fixed name (permissions or number mappings name it), registered once
    per session, logged in afresh and synced past the history of earlier tests."""
    import asyncio
    import urllib.error

    password = f"{localpart}-pw"
    try:
        stack.synapse.register_user(localpart, password)
    except urllib.error.HTTPError as e:
        if e.code != 400:  # 400: registered by an earlier test
            raise
    user = await login(stack.synapse.url, f"@{localpart}:{SERVER_NAME}", password)
    user.start_sync()
    await asyncio.wait_for(user.synced.wait(), 20)
    return user


def postgres_available() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL on each back end; Postgres gets its own schema-free database."""
    if request.param == "sqlite":
        yield f"sqlite:{tmp_path / 'bridge.db'}"
        return
    if not postgres_available():
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (make test starts it)")
    import asyncio

    import asyncpg

    name = f"bridge_test_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
