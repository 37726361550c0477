"""`make demo`: the whole product on loopback, until Ctrl-C.

Starts a local Synapse, a demo PBX for the company "Acme Corp" (Kamailio as registrar and
proxy; extension 100, the main line, is an echo test played by sipp; extension 101, "Alice
Martin", is baresip answering with an 800 Hz tone) and the bridge on SQLite, registered to the
PBX. State lives in ./demo-data; everything started here is stopped by PID on exit.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
import urllib.error
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.bridge_proc import BridgeProc  # noqa: E402
from tests.harness.synapse import Synapse  # noqa: E402
from tests.peers.baresip import Baresip  # noqa: E402
from tests.peers.kamailio import Kamailio  # noqa: E402
from tests.peers.sipp import Sipp  # noqa: E402

DATA = Path(os.environ.get("DEMO_DATA", REPO / "demo-data"))
HS_PORT = int(os.environ.get("DEMO_HS_PORT", "8008"))
PBX_PORT = int(os.environ.get("DEMO_PBX_PORT", "5070"))
SIP_PORT = int(os.environ.get("DEMO_SIP_PORT", "5090"))
ECHO_PORT = int(os.environ.get("DEMO_ECHO_PORT", "5072"))
MEDIA_ADDRESS = os.environ.get("DEMO_MEDIA_ADDRESS", "127.0.0.1")
SERVER_NAME = os.environ.get("DEMO_SERVER_NAME", "localhost")
DEMO_USER, DEMO_PASSWORD = "demo", "demo"
PBX_USERS = {"matrix": "demopbxsecret", "101": "pw101"}


def bridge_overrides() -> dict:
    return {
        "bridge": {"permissions": {"*": "user"}, "default_company": "acme"},
        "companies": {
            "acme": {
                "name": "Acme Corp",
                "description": "The demo company: call 100 for an echo test, 101 for Alice",
                "pbx": {"mode": "register", "registrar": f"sip:127.0.0.1:{PBX_PORT}",
                        "username": "matrix", "password": PBX_USERS["matrix"]},
                "main_line": "100",
                "extensions": {"101": {"name": "Alice Martin", "public": True}},
                "numbers": {"2000": f"@{DEMO_USER}:{SERVER_NAME}"},
            },
        },
        "sip": {"listen": {"udp": f"127.0.0.1:{SIP_PORT}", "tcp": f"127.0.0.1:{SIP_PORT}"},
                "public_address": "127.0.0.1", "media_addresses": [MEDIA_ADDRESS],
                "workers": 1},
        "logging": {"level": "INFO"},
    }


def main() -> int:
    DATA.mkdir(parents=True, exist_ok=True)
    secret_file = DATA / "shared_secret"
    if not secret_file.exists():
        secret_file.write_text(os.urandom(16).hex())
    synapse = Synapse(DATA / "synapse", registrations=[], server_name=SERVER_NAME,
                      port=HS_PORT, shared_secret=secret_file.read_text().strip())
    bridge_dir = DATA / "bridge"
    (bridge_dir / "config.yaml").unlink(missing_ok=True)  # made afresh; the database stays
    bridge = BridgeProc(bridge_dir, synapse.url, SERVER_NAME, overrides=bridge_overrides())
    bridge.generate()
    synapse.registrations = [bridge.registration_path]
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pbx = Kamailio(DATA / "pbx", users=copy.deepcopy(PBX_USERS), port=PBX_PORT,
                   routes={"100": f"127.0.0.1:{ECHO_PORT}", "2000": "@matrix"})
    echo = Sipp.uas_echo(DATA / "pbx", calls=100000, local_port=ECHO_PORT, name="echo-100")
    alice = Baresip(DATA / "pbx" / "alice", user="101", password=PBX_USERS["101"],
                    registrar=f"127.0.0.1:{PBX_PORT}", tone_hz=800.0, name="alice-101")
    started: list = []
    try:
        print(f"starting the demo PBX (Kamailio on 127.0.0.1:{PBX_PORT}) ...", flush=True)
        for proc in (pbx, echo, alice):
            proc.start()
            started.append(proc)
        alice.wait_registered(15)
        print(f"starting Synapse on {synapse.url} (server name {SERVER_NAME}) ...", flush=True)
        synapse.start()
        try:
            synapse.register_user(DEMO_USER, DEMO_PASSWORD)
        except urllib.error.HTTPError as e:
            if e.code != 400:  # 400 = the user exists from an earlier run
                raise
        print("starting the bridge ...", flush=True)
        bridge.start()
        pbx.wait_registered(pbx.aor("matrix"), 20)
        print(
            "\n"
            "The demo is running.\n"
            f"  Homeserver URL : {synapse.url}\n"
            f"  Log in as      : {DEMO_USER} / password {DEMO_PASSWORD}"
            f"  (@{DEMO_USER}:{SERVER_NAME})\n"
            "  Then, in Element: open the dial pad and type  acme  (the echo test on Acme's\n"
            "  main line) or  acme 101  (Alice, who answers with a tone); or search the room\n"
            f"  directory for Acme; or DM @sipbot:{SERVER_NAME} and send: help\n"
            f"  WebRTC media   : {MEDIA_ADDRESS} (set DEMO_MEDIA_ADDRESS to this machine's\n"
            "                   address to call from another machine)\n"
            f"  Logs           : {DATA}/synapse/homeserver.log, {bridge_dir}/bridge-*.log\n"
            "Press Ctrl-C to stop everything.\n",
            flush=True,
        )
        while not stopping:
            if bridge.proc is not None and not bridge.proc.alive():
                print("the bridge exited; see its log", file=sys.stderr)
                return 1
            time.sleep(0.5)
    finally:
        print("stopping ...", flush=True)
        bridge.stop()
        synapse.stop()
        for proc in reversed(started):
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
