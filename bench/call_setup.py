"""Call setup overhead of the bridge, over N sequential Matrix → PBX calls.

Starts its own Synapse, the bridge and a sipp UAS with RTP echo as trunkco's PBX (all on
127.0.0.1, scratch files in RAM), places N calls one after the other with the Element-like
test client, and reads the bridge's own per-call measurement from its log: m.call.invite
handled → SIP INVITE sent, and SIP 200 received → m.call.answer sent (which includes the PUT
of m.call.answer to Synapse: the client's own PUTs of m.call.* events are timed beside it).
Prints one JSON object and a short table.

    .venv/bin/python bench/call_setup.py --calls 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._stack import bench_login, bench_tmpdir, make_stack, start_stack  # noqa: E402
from tests.harness.call_client import CallClient, CallState  # noqa: E402
from tests.harness.synapse import SERVER_NAME  # noqa: E402
from tests.peers.sipp import Sipp  # noqa: E402

LINE = re.compile(r"setup overhead: m\.call\.invite→INVITE ([0-9.]+) ms, 200→m\.call\.answer ([0-9.]+) ms")


class TimedClient(CallClient):
    """The test client, timing its PUTs of m.call.* events (ms)."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.put_ms: list[float] = []

    async def _send(self, event_type: str, content: dict[str, Any]) -> str:
        t = time.monotonic()
        try:
            return await super()._send(event_type, content)
        finally:
            self.put_ms.append((time.monotonic() - t) * 1000)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def run(n: int, root: Path) -> dict:
    stack = make_stack(root, workers=1, log_levels={"bridge.calls.manager": "INFO"})
    pbx = Sipp.uas_echo(root, calls=n, local_port=stack.trunk_port)
    wall: list[float] = []
    puts: list[float] = []
    try:
        start_stack(stack)
        pbx.start()
        stack.synapse.register_user("bench", "benchpw")
        user = await bench_login(stack.synapse.url, f"@bench:{SERVER_NAME}", "benchpw")
        user.start_sync()
        ghost = f"@sip_trunkco_201:{SERVER_NAME}"
        room = await user.create_dm(ghost)
        await user.wait_for(lambda e: e["room_id"] == room and e.get("state_key") == ghost
                            and e["content"].get("membership") == "join", timeout=30)
        for _ in range(n):
            client = TimedClient(user.transport(room))
            t0 = time.monotonic()
            await client.place_call()
            await client.wait_for_state(CallState.CONNECTED, timeout=30)
            wall.append((time.monotonic() - t0) * 1000)
            await client.hangup()
            await client.close()
            puts += client.put_ms
            await asyncio.sleep(0.3)
        await user.close()
        await asyncio.sleep(1.0)
        log_text = stack.bridge.log_text()
    finally:
        pbx.stop()
        stack.stop()
    pairs = [(float(a), float(b)) for a, b in LINE.findall(log_text)]
    inv = [a for a, _ in pairs]
    ans = [b for _, b in pairs]
    return {
        "calls": n,
        "measured": len(pairs),
        "invite_to_sip_invite_ms": {"median": statistics.median(inv), "p95": pct(inv, 95),
                                    "max": max(inv)},
        "sip_200_to_matrix_answer_ms": {"median": statistics.median(ans), "p95": pct(ans, 95),
                                        "max": max(ans)},
        "client_invite_to_connected_ms": {"median": statistics.median(wall),
                                          "p95": pct(wall, 95), "max": max(wall)},
        "client_event_put_ms": {"median": statistics.median(puts), "p95": pct(puts, 95),
                                "max": max(puts)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    with bench_tmpdir("bench-setup-") as d:
        result = asyncio.run(run(args.calls, Path(d)))
    print(json.dumps(result, indent=2))
    print(f"\n{'measure':38} {'median':>8} {'p95':>8} {'max':>8}")
    for key in ("invite_to_sip_invite_ms", "sip_200_to_matrix_answer_ms",
                "client_invite_to_connected_ms", "client_event_put_ms"):
        v = result[key]
        print(f"{key:38} {v['median']:8.1f} {v['p95']:8.1f} {v['max']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
