"""A real Synapse homeserver from PyPI on a free loopback port, with SQLite.

Rate limits are lifted so tests can register users and send quickly; the bridge's
registration file is installed before start. Users are created through the shared-secret
admin registration API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.peers.ports import free_port
from tests.peers.procs import Process, wait_until

SERVER_NAME = "bridge.test"

_RC_UNLIMITED = {"per_second": 1000, "burst_count": 1000}


class Synapse:
    def __init__(self, workdir: Path, registrations: list[Path], server_name: str = SERVER_NAME,
                 port: int | None = None, shared_secret: str | None = None):
        self.workdir = workdir
        self.server_name = server_name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.shared_secret = shared_secret or secrets.token_hex(16)
        self.registrations = registrations
        self.proc: Process | None = None

    def write_config(self) -> Path:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        log_config = d / "log.yaml"
        log_config.write_text(
            "version: 1\n"
            "formatters: {f: {format: '%(asctime)s %(levelname)s %(name)s: %(message)s'}}\n"
            "handlers: {file: {class: logging.FileHandler, formatter: f, "
            f"filename: {d / 'homeserver.log'}}}}}\n"
            "root: {level: INFO, handlers: [file]}\n"
            "disable_existing_loggers: false\n"
        )
        cfg = {
            "server_name": self.server_name,
            "pid_file": str(d / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
            "log_config": str(log_config),
            "media_store_path": str(d / "media"),
            "signing_key_path": str(d / "signing.key"),
            "registration_shared_secret": self.shared_secret,
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "enable_metrics": False,
            "app_service_config_files": [str(p) for p in self.registrations],
            "rc_message": _RC_UNLIMITED,
            "rc_registration": _RC_UNLIMITED,
            "rc_login": {"address": _RC_UNLIMITED, "account": _RC_UNLIMITED,
                         "failed_attempts": _RC_UNLIMITED},
            "rc_joins": {"local": _RC_UNLIMITED, "remote": _RC_UNLIMITED},
            "rc_invites": {"per_room": _RC_UNLIMITED, "per_user": _RC_UNLIMITED,
                           "per_issuer": _RC_UNLIMITED},
            "rc_admin_redaction": _RC_UNLIMITED,
            "rc_3pid_validation": _RC_UNLIMITED,
            "rc_presence": {"per_user": _RC_UNLIMITED},
            "rc_delayed_event_mgmt": _RC_UNLIMITED,
            "rc_room_creation": _RC_UNLIMITED,
            "federation_rr_transactions_per_room_per_second": 1000,
            "room_list_publication_rules": [{"action": "allow"}],
            "alias_creation_rules": [{"action": "allow"}],
            "user_directory": {"enabled": True, "search_all_users": True},
            "url_preview_enabled": False,
            "presence": {"enabled": True},
            "turn_uris": [],
        }
        path = d / "homeserver.yaml"
        path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
        return path

    def start(self, timeout: float = 60.0) -> Synapse:
        path = self.write_config()
        if not (self.workdir / "signing.key").exists():
            gen = Process("synapse-keys", [sys.executable, "-m", "synapse.app.homeserver",
                                        "-c", str(path), "--generate-keys"], self.workdir).start()
            if gen.wait(120) != 0:
                raise RuntimeError("synapse --generate-keys failed:\n" + gen.log_text())
        self.proc = Process("synapse", [sys.executable, "-m", "synapse.app.homeserver",
                                     "-c", str(path)], self.workdir).start()
        wait_until(self._up, timeout, 0.2, "Synapse to answer /_matrix/client/versions")
        return self

    def _up(self) -> bool:
        if self.proc is not None and not self.proc.alive():
            raise RuntimeError("Synapse exited:\n" + self.proc.log_text()[-3000:]
                               + self.log_tail())
        try:
            with urllib.request.urlopen(self.url + "/_matrix/client/versions", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, n: int = 4000) -> str:
        p = self.workdir / "homeserver.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=10.0)

    def register_user(self, localpart: str, password: str, admin: bool = False) -> dict:
        """Shared-secret registration; returns the login response (user_id, access_token)."""
        url = self.url + "/_synapse/admin/v1/register"
        with urllib.request.urlopen(url, timeout=10) as r:
            nonce = json.load(r)["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        body = {"nonce": nonce, "username": localpart, "password": password,
                "admin": admin, "mac": mac.hexdigest()}
        req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
