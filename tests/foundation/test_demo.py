"""`make demo`'s script brings up a homeserver where the demo user DMs the bot and gets help;
Ctrl-C stops everything it started."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bridge.media import tone
from tests.harness.dm_calls import connected_call
from tests.harness.matrix_user import login
from tests.peers.ports import free_port

REPO = Path(__file__).resolve().parents[2]


async def test_demo_runs_and_the_bot_answers(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, DEMO_DATA=str(tmp_path / "demo"), DEMO_HS_PORT=str(port),
               DEMO_PBX_PORT=str(free_port()), DEMO_SIP_PORT=str(free_port()),
               DEMO_ECHO_PORT=str(free_port()))
    out = (tmp_path / "demo.out").open("w+")
    proc = subprocess.Popen([sys.executable, str(REPO / "demo/run.py")], stdout=out,
                            stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "The demo is running" not in (tmp_path / "demo.out").read_text():
            assert proc.poll() is None, (tmp_path / "demo.out").read_text()
            assert time.monotonic() < deadline, "demo did not come up"
            time.sleep(0.3)
        text = (tmp_path / "demo.out").read_text()
        assert f"http://127.0.0.1:{port}" in text and "demo / password demo" in text
        user = await login(f"http://127.0.0.1:{port}", "@demo:localhost", "demo")
        user.start_sync()
        try:
            room = await user.create_dm("@sipbot:localhost")
            await user.wait_for(lambda e: e["room_id"] == room
                                and e.get("sender") == "@sipbot:localhost"
                                and e["type"] == "m.room.message", timeout=30)
            await user.send_text(room, "help")
            reply = await user.wait_for(
                lambda e: e["room_id"] == room and "Commands:" in e.get("content", {}).get("body", ""),
                timeout=30)
            assert reply["sender"] == "@sipbot:localhost"
            # Call "acme" as Element's dial pad does: look it up, DM the ghost, call.
            found = await user.request("GET", "/_matrix/client/v3/thirdparty/user/m.protocol.pstn",
                                       query={"m.id.phone": "acme"})
            assert found[0]["userid"] == "@sip_acme:localhost"
            async with connected_call(user, "@sip_acme:localhost", tone_hz=1000) as (client, _):
                await asyncio.sleep(0.8)
                report = tone.analyse(await client.record(1.0), 8000)
                assert abs(report.freq_hz - 1000) <= 20 and report.level_dbfs > -30, report  # the echo test
                await client.hangup()
        finally:
            await user.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    pids = [p for p in (tmp_path / "demo").rglob("*.pid")]
    for pidfile in pids:  # every PID file left behind must name a dead process
        try:
            os.kill(int(pidfile.read_text()), 0)
            raise AssertionError(f"{pidfile} still running")
        except (ProcessLookupError, ValueError):
            pass
