"""End to end: an extension's state at its PBX is its ghost's Matrix presence.

Synapse + the bridge (one company, ``pbx.presence: dialog``) + a sipp PBX that answers the
bridge's SUBSCRIBE for extension 301 and NOTIFYs idle, a confirmed call, idle again, then
ends the subscription. A Matrix user who shares a room with the ghost reads its presence
(GET /presence/{ghost}/status) and sees online, unavailable "On a call", online (still online
long after Synapse would have timed the ghost out, thanks to the bridge's repeats), offline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.harness.bridge_proc import BridgeProc
from tests.harness.dm_calls import dm_with
from tests.harness.matrix_user import MatrixUser
from tests.harness.own_stack import own_stack, syncing_user
from tests.harness.synapse import SERVER_NAME, Synapse
from tests.peers.ports import free_port
from tests.sip.test_presence import subscribe_pbx
from tests.sip.test_presence_body import dialog_info

GHOST = f"@sip_presco_301:{SERVER_NAME}"
#: idle → busy (time to set up the Matrix user and its DM), busy → idle, idle → terminated
#: (past the moment Synapse would time an idle ghost out, see below)
GAPS_MS = (12000, 5000, 78000)


@dataclass
class PresenceStack:
    synapse: Synapse
    bridge: BridgeProc
    pbx: Any


@pytest.fixture
def presence_stack(tmp_path: Path) -> Iterator[PresenceStack]:
    pbx_port = free_port()
    pbx = subscribe_pbx(tmp_path / "pbx", "dialog", "application/dialog-info+xml",
                        dialog_info(0), dialog_info(1, ("c1", "confirmed")),
                        dialog_info(2, ("c1", "terminated")), gaps_ms=GAPS_MS,
                        port=pbx_port, timeout_s=180)
    overrides = {
        "companies": {"presco": {
            "name": "Presence Co", "main_line": "300",
            "pbx": {"mode": "trunk", "registrar": f"sip:127.0.0.1:{pbx_port}",
                    "allowed_sources": ["127.0.0.1"], "presence": "dialog"},
            "extensions": {"301": {"name": "Pat Presence", "public": True}},
        }},
        "bridge": {"default_company": None},
        "sip": {"listen": {"udp": "127.0.0.1:0", "tcp": "127.0.0.1:0"}, "workers": 1},
    }
    with own_stack(tmp_path, overrides, pbx) as (synapse, bridge):
        yield PresenceStack(synapse, bridge, pbx)


async def presence_of(user: MatrixUser, mxid: str) -> tuple[str, str | None]:
    body = await user.request("GET", f"/_matrix/client/v3/presence/{quote(mxid)}/status")
    return body["presence"], body.get("status_msg")


async def wait_presence(user: MatrixUser, want: tuple[str, str | None], timeout_s: float,
                        seen: list[tuple[str, str | None]]) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        now = await presence_of(user, GHOST)
        if not seen or seen[-1] != now:
            seen.append(now)
        if now == want:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"ghost presence never became {want}; seen {seen}")
        await asyncio.sleep(0.2)


async def test_extension_state_is_the_ghosts_presence(presence_stack: PresenceStack) -> None:
    st = presence_stack
    user = await syncing_user(st.synapse, "watcher")
    try:
        await dm_with(user, GHOST)  # presence is shown to users who share a room
        seen: list[tuple[str, str | None]] = []
        await wait_presence(user, ("online", None), 10, seen)
        await wait_presence(user, ("unavailable", "On a call"), 20, seen)
        await wait_presence(user, ("online", None), 10, seen)
        assert seen[-3:] == [("online", None), ("unavailable", "On a call"),
                             ("online", None)], seen
        # Synapse checks an online user again last_active_granularity (60 s) after its last
        # update and puts it offline when it was neither active nor syncing for the last
        # sync_online_timeout (30 s): a ghost left alone is offline 60-65 s after being set
        # online. The bridge repeats the state every 20 s, so it is still online after 70 s.
        await asyncio.sleep(70)
        assert await presence_of(user, GHOST) == ("online", None)
        # The PBX ends the subscription: offline.
        await wait_presence(user, ("offline", None), 20, seen)
    finally:
        await user.close()
    assert await asyncio.to_thread(st.pbx.proc.wait, 10) == 0, st.pbx.explain()
    log = st.bridge.log_text()
    assert "presence presco/301: busy" in log and "unavailable" in log
