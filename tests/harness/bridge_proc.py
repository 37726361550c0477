"""The bridge as a separate process, started the way an admin would: -g, then run."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.peers.ports import free_port
from tests.peers.procs import Process, wait_until

REPO = Path(__file__).resolve().parents[2]


# Companies every test stack knows; tests that need a live PBX point one at their own.
TEST_COMPANIES: dict[str, Any] = {
    "acme": {
        "name": "Acme Corp",
        "description": "Widgets since 1950",
        # The stack points acme's registrar at its Kamailio.
        "pbx": {"mode": "register", "registrar": "sip:127.0.0.1:5999", "username": "matrix",
                "password": "acmepbxsecret"},
        "main_line": "100",
        "extensions": {"101": {"name": "Alice Martin", "public": True},
                       "102": {"name": "Bob Stone"}},
        "numbers": {"2001": "@receiver:bridge.test"},
        "dial_out": ["1XX", "0ZXXXXXXX"],
        "claimable_numbers": ["3XXX"],
    },
    "globex": {
        "name": "Globex Corporation",
        # Documentation addresses (never contacted): only trunkco trusts 127.0.0.1.
        "pbx": {"mode": "trunk", "registrar": "sip:127.0.0.1:5998",
                "allowed_sources": ["192.0.2.1"]},
        "main_line": "0",
    },
    # A trunk-mode PBX played by sipp on a port the stack chooses (tests start the sipp).
    "trunkco": {
        "name": "Trunk Co",
        "pbx": {"mode": "trunk", "registrar": "sip:127.0.0.1:5996",
                "allowed_sources": ["127.0.0.1"]},
        "main_line": "200",
        "extensions": {"201": {"name": "Sam Sipp", "public": True}},
    },
    "cafe-muller": {
        "name": "Café Müller",
        "description": "Kaffee und Kuchen",
        "pbx": {"mode": "trunk", "registrar": "sip:127.0.0.1:5997",
                "allowed_sources": ["192.0.2.2"]},
        "main_line": "1",
    },
}


def base_config(hs_url: str, domain: str, port: int, database: str) -> dict[str, Any]:
    return {
        "homeserver": {"address": hs_url, "domain": domain},
        "appservice": {
            "address": f"http://127.0.0.1:{port}",
            "hostname": "127.0.0.1",
            "port": port,
            "database": database,
            "id": "sip",
            "as_token": "generate",
            "hs_token": "generate",
            "provisioning_secret": "generate",
        },
        "bridge": {"permissions": {"*": "call", domain: "user", f"@lowly:{domain}": "call",
                                   f"@boss:{domain}": "admin"},
                   "default_company": "acme",
                   "inbound_ring_seconds": 6,
                   "limits": {"calls_per_user": 2, "call_attempts_per_minute": 8,
                              "messages_per_minute": 5}},
        "sip": {"listen": {"udp": "127.0.0.1:0", "tcp": "127.0.0.1:0"},
                "public_address": "127.0.0.1", "media_addresses": ["127.0.0.1"],
                "workers": 1,
                # the tests' peers and Synapse share the cores with the bridge: admission
                # control stays off except in its own tests (tests/scale/test_admission.py)
                "min_idle_cpu": 0},
        "companies": TEST_COMPANIES,
        "logging": {"level": "DEBUG", "levels": {"mau": "INFO", "aiosqlite": "INFO"}},
    }


class BridgeProc:
    def __init__(self, workdir: Path, hs_url: str, domain: str,
                 database: str | None = None, overrides: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = workdir / "config.yaml"
        self.registration_path = workdir / "registration.yaml"
        cfg = base_config(hs_url, domain, self.port, database or "sqlite:bridge.db")
        for section, values in (overrides or {}).items():
            if isinstance(values, dict) and isinstance(cfg.get(section), dict):
                cfg[section] = {**cfg[section], **copy.deepcopy(values)}
            else:
                cfg[section] = copy.deepcopy(values)
        self.config_path.write_text(json.dumps(cfg, indent=2))
        self.config_path.chmod(0o600)
        self.proc: Process | None = None
        self.starts = 0

    def generate(self) -> dict[str, Any]:
        res = subprocess.run(
            [sys.executable, "-m", "bridge", "-c", str(self.config_path), "-g",
             "-r", str(self.registration_path)],
            capture_output=True, text=True, timeout=60, cwd=self.workdir,
        )
        if res.returncode != 0:
            raise RuntimeError(f"-g failed: {res.stderr}")
        from ruamel.yaml import YAML

        return dict(YAML(typ="safe").load(self.config_path.read_text())["appservice"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> BridgeProc:
        self.starts += 1
        self.proc = Process(f"bridge-{self.starts}",
                         [sys.executable, "-m", "bridge", "-c", str(self.config_path)],
                         self.workdir, cwd=REPO).start()
        wait_until(self._up, timeout, 0.1, "the bridge's /health")
        return self

    def _up(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise RuntimeError("bridge exited:\n" + self.proc.log_text()[-4000:])
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop(grace=10.0)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.workdir.glob("bridge-*.log")))
