"""An overloaded bridge (sip.min_idle_cpu) refuses a Matrix user's call as busy, with a
notice that says why and nothing sent to the PBX; /metrics counts it; once the CPU is free
the same call goes through. Real CPU load (one spinning process per core), real Synapse,
bridge and sipp PBX."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness.bridge_proc import BridgeProc
from tests.harness.call_client import CallClient, CallOptions, CallState
from tests.harness.cpu_load import busy_cores
from tests.harness.dm_calls import dm_with, notice_in
from tests.harness.matrix_user import MatrixUser
from tests.harness.own_stack import own_stack, syncing_user
from tests.harness.synapse import SERVER_NAME, Synapse
from tests.peers.ports import free_port
from tests.peers.sipp import Sipp

MIN_IDLE = 50
GHOST = f"@sip_busyco_201:{SERVER_NAME}"


class OverloadStack:
    def __init__(self, synapse: Synapse, bridge: BridgeProc, pbx: Sipp, metrics_port: int):
        self.synapse, self.bridge, self.pbx, self.metrics_port = synapse, bridge, pbx, \
            metrics_port

    async def metrics(self) -> dict[str, float]:
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            text = await r.text()
        out = {}
        for line in text.splitlines():
            if line.startswith("bridge_c"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    async def wait_idle(self, below: bool, timeout_s: float) -> float:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            idle = (await self.metrics()).get("bridge_cpu_idle_percent")
            if idle is not None and (idle < MIN_IDLE if below else idle >= MIN_IDLE + 10):
                return idle
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"CPU idle never went {'below' if below else 'above'} "
                                     f"{MIN_IDLE} % (last {idle})")
            await asyncio.sleep(0.2)


@pytest.fixture
def overload_stack(tmp_path: Path) -> Iterator[OverloadStack]:
    pbx_port, metrics_port = free_port(), free_port()
    pbx = Sipp.uas_ring(tmp_path / "pbx", local_port=pbx_port, timeout_s=120)
    overrides = {
        "companies": {"busyco": {
            "name": "Busy Co", "main_line": "200",
            "pbx": {"mode": "trunk", "registrar": f"sip:127.0.0.1:{pbx_port}",
                    "allowed_sources": ["127.0.0.1"]},
            "extensions": {"201": {"name": "Bea Busy", "public": True}},
        }},
        "bridge": {"default_company": None},
        "sip": {"listen": {"udp": "127.0.0.1:0", "tcp": "127.0.0.1:0"}, "workers": 1,
                "min_idle_cpu": MIN_IDLE},
        "metrics": {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
    }
    with own_stack(tmp_path, overrides, pbx) as (synapse, bridge):
        yield OverloadStack(synapse, bridge, pbx, metrics_port)


async def _call(user: MatrixUser, room: str) -> CallClient:
    client = CallClient(user.transport(room), CallOptions(lifetime_ms=30000))
    await client.place_call()
    return client


async def test_overloaded_bridge_refuses_calls_as_busy(overload_stack: OverloadStack) -> None:
    st = overload_stack
    user = await syncing_user(st.synapse, "caller")
    clients: list[CallClient] = []
    try:
        room = await dm_with(user, GHOST)
        with busy_cores():
            await st.wait_idle(below=True, timeout_s=15)
            refused = await _call(user, room)
            clients.append(refused)
            await refused.wait_for_state(CallState.ENDED, timeout=20)
            assert refused.hangup_reason == "user_busy"
            await notice_in(user, room, "The bridge is too busy to place more calls")
        assert st.pbx.received("INVITE") == []
        counts = await st.metrics()
        assert counts['bridge_calls_refused_overload_total{direction="outbound"}'] == 1
        assert counts["bridge_call_cpu_percent"] == 2.0  # no call answered yet: the default
        assert counts['bridge_call_attempts_total{company="busyco",direction="outbound",'
                      'outcome="overloaded"}'] == 1

        await st.wait_idle(below=False, timeout_s=20)
        ringing = await _call(user, room)
        clients.append(ringing)
        for _ in range(100):
            if st.pbx.received("INVITE"):
                break
            await asyncio.sleep(0.1)
        assert len(st.pbx.received("INVITE")) == 1
        assert ringing.state != CallState.ENDED
        await ringing.hangup()
        assert await asyncio.to_thread(st.pbx.wait, 20) == 0
    finally:
        for c in clients:
            await c.close()
        await user.close()
