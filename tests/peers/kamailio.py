"""A Kamailio registrar/proxy with digest auth, run from its own config on a free port.

Never touches /etc/kamailio or a system Kamailio: the config, the runtime folder and the
ctl socket are in the work folder (or a short folder in /tmp when the work folder's path is
too long for a Unix socket), and the process is ours, stopped by its PID.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tests.peers.ports import LOOPBACK, free_port, sip_options
from tests.peers.procs import Process, ProcessError, wait_until

KAMAILIO = "/usr/sbin/kamailio"
KAMCMD = "/usr/sbin/kamcmd"
TEMPLATE = Path(__file__).with_name("kamailio") / "registrar.cfg"
DEFAULT_USERS: Mapping[str, str] = {"matrix": "secret", "101": "pw101"}
_SAFE = re.compile(r"^[A-Za-z0-9_.+\-=!~*()]+$")
_MAX_SOCKET_PATH = 100


class Kamailio:
    """Registrar + proxy on ``host:port`` over UDP and TCP (host: 127.0.0.1, or another
    loopback address such as 127.0.0.2 when a test needs the PBX apart from its other peers).

    ``users`` maps user name to password (digest realm = ``domain``). REGISTER needs digest
    auth; INVITE/MESSAGE from a user in ``users`` need proxy auth (407); anything else is
    routed without auth. The domain (digest realm) defaults to ``host``. Requests go to the
    registered contacts of the R-URI user, else to
    ``routes[user]`` or ``routes["*"]``: ``127.0.0.1:PORT`` (a static trunk: the R-URI
    becomes ``sip:USER@127.0.0.1:PORT``) or ``@AOR`` (the contacts registered for AOR, the
    R-URI user kept as dialled: how a PBX sends calls down a registered trunk, e.g.
    ``{"*": "@matrix"}`` sends calls for unknown users to the bridge registered as
    "matrix"), else 480 (a known user) or 404. ``stop()`` then ``start()`` brings it back on
    the same port with an empty location table.
    """

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str] | None = None,
        domain: str | None = None,
        port: int | None = None,
        qop: bool = False,
        debug: int = 2,
        routes: Mapping[str, str] | None = None,
        host: str = LOOPBACK,
    ) -> None:
        if not re.fullmatch(r"127\.\d+\.\d+\.\d+", host):
            raise ValueError(f"kamailio listens on loopback only, not {host}")
        self.host = host
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(DEFAULT_USERS if users is None else users)
        for name, pw in self.users.items():
            if not (_SAFE.match(name) and _SAFE.match(pw)):
                raise ValueError(f"user name/password for {name!r} has unsupported characters")
        self.routes = dict(routes or {})
        for user, target in self.routes.items():
            _check_route(user, target)
        self.domain = domain or host
        self.port = port or free_port()
        self.qop = qop
        self.debug = debug
        self.cfg_path = self.workdir / "kamailio.cfg"
        self.rundir = self.workdir / "run"
        self._sockdir: Path | None = None
        sock = self.workdir / "kamailio_ctl"
        if len(str(sock)) > _MAX_SOCKET_PATH:
            self._sockdir = Path(tempfile.mkdtemp(prefix="kam-"))
            sock = self._sockdir / "ctl"
        self.ctl_socket = sock
        argv = [KAMAILIO, "-DD", "-E", "-f", str(self.cfg_path), "-Y", str(self.rundir)]
        argv += ["-m", "32", "-M", "4", "-a", "no"]
        self.proc = Process("kamailio", argv, self.workdir)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``HOST:PORT`` (``127.0.0.1:PORT`` by default)"""
        return f"{self.host}:{self.port}"

    @property
    def uri(self) -> str:
        """The proxy's SIP URI, ``sip:HOST:PORT``."""
        return f"sip:{self.address}"

    def aor(self, user: str) -> str:
        """``sip:USER@DOMAIN`` (with the port when the domain is the loopback address)."""
        host = self.address if self.domain == self.host else self.domain
        return f"sip:{user}@{host}"

    def write_config(self) -> Path:
        users = "\n".join(f'\t$sht(subs=>{u}) = "{p}";' for u, p in self.users.items())
        routes = "\n".join(f'\t$sht(routes=>{u}) = "{t}";' for u, t in self.routes.items())
        alias = "" if self.domain == self.host else f"alias={self.domain}"
        text = TEMPLATE.read_text()
        for key, value in {
            "HOST": self.host,
            "PORT": str(self.port),
            "ALIAS": alias,
            "DOMAIN": self.domain,
            "REALM": self.domain,
            "QOP": "1" if self.qop else "0",
            "USERS": users,
            "ROUTES": routes,
            "CTL_SOCKET": str(self.ctl_socket),
            "DEBUG": str(self.debug),
        }.items():
            text = text.replace(f"@@{key}@@", value)
        self.cfg_path.write_text(text)
        return self.cfg_path

    def check_config(self) -> None:
        """``kamailio -c``: raise ProcessError with its output if the config is invalid."""
        self.write_config()
        self.rundir.mkdir(exist_ok=True)
        r = subprocess.run(
            [KAMAILIO, "-c", "-f", str(self.cfg_path), "-Y", str(self.rundir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if r.returncode != 0:
            raise ProcessError(f"kamailio config check failed:\n{r.stdout}{r.stderr}")

    def start(self, timeout: float = 15.0) -> Kamailio:
        """Write the config, start Kamailio and wait until it answers OPTIONS and RPC."""
        self.write_config()
        self.rundir.mkdir(exist_ok=True)
        self.ctl_socket.unlink(missing_ok=True)
        self.proc.start()

        def ready() -> bool:
            if not self.proc.alive():
                raise ProcessError(f"kamailio exited:\n{self.proc.log_tail()}")
            return bool(
                self.ctl_socket.exists()
                and (sip_options(self.port, host=self.host, timeout=0.3) or "")
                .startswith("SIP/2.0 200")
            )

        try:
            wait_until(ready, timeout, what=f"kamailio on {self.address}")
        except TimeoutError:
            self.proc.stop()
            raise ProcessError(f"kamailio did not come up:\n{self.proc.log_tail()}") from None
        return self

    def stop(self) -> None:
        self.proc.stop()

    def close(self) -> None:
        """Stop and remove the short socket folder, if one was made."""
        self.stop()
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)

    def alive(self) -> bool:
        return self.proc.alive()

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- control ---------------------------------------------------------------------------

    def rpc(self, *args: str, check: bool = True) -> str:
        """Run ``kamcmd -s <our ctl socket> ARGS`` and return its output.

        kamcmd turns numeric-looking arguments into integers: prefix ``s:`` to keep a
        string (``rpc("ul.lookup", "location", "s:101")``)."""
        r = subprocess.run(
            [KAMCMD, "-s", f"unix:{self.ctl_socket}", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if check and r.returncode != 0:
            raise ProcessError(f"kamcmd {' '.join(args)} failed: {r.stdout}{r.stderr}")
        return r.stdout

    def registered_contacts(self, aor: str) -> list[str]:
        """Contact URIs currently registered for ``aor`` (a user name or a SIP URI)."""
        out = self.rpc("ul.lookup", "location", f"s:{_user(aor)}", check=False)
        return re.findall(r"^\s*Address:\s*(\S+)", out, re.MULTILINE)

    def wait_registered(self, aor: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        """Wait until ``aor`` has at least ``count`` contacts; returns them."""
        found: list[str] = []

        def check() -> bool:
            found[:] = self.registered_contacts(aor)
            return len(found) >= count

        wait_until(check, timeout, interval=0.1, what=f"registration of {aor}")
        return found

    def add_contact(self, aor: str, contact: str, expires: int = 3600) -> None:
        """Put ``contact`` into the location table for ``aor`` without a REGISTER (for
        peers that cannot register, like sipp). Loopback contacts only."""
        if not re.fullmatch(r"sips?:([^@;>]+@)?127\.\d+\.\d+\.\d+:\d+(;[\w=.-]+)*", contact):
            raise ValueError(f"contact must be a loopback SIP URI, not {contact!r}")
        user = _user(aor)
        # table, AOR, contact, expires, q, path ("0" = none), flags, cflags, methods (all)
        self.rpc(
            "ul.add", "location", f"s:{user}", f"s:{contact}", str(expires), "1.0", "s:0",
            "0", "0", "4294967295",
        )  # fmt: skip

    def remove_contacts(self, aor: str) -> None:
        """Drop every contact of ``aor`` from the location table."""
        self.rpc("ul.rm", "location", f"s:{_user(aor)}", check=False)

    def set_password(self, user: str, password: str) -> None:
        """Add a user or change a password at run time (and in the config for a restart)."""
        if not (_SAFE.match(user) and _SAFE.match(password)):
            raise ValueError("unsupported characters in user name or password")
        self.users[user] = password
        if self.alive():
            self.rpc("htable.sets", "subs", f"s:{user}", f"s:{password}")

    def remove_user(self, user: str) -> None:
        self.users.pop(user, None)
        if self.alive():
            self.rpc("htable.delete", "subs", f"s:{user}", check=False)

    def set_route(self, user: str, target: str | None) -> None:
        """Route requests for ``user`` (``*`` = any unknown user) to ``target``
        (``127.0.0.1:PORT`` or ``@AOR``), or remove the route with None. Works at run time."""
        if target is None:
            self.routes.pop(user, None)
            if self.alive():
                self.rpc("htable.delete", "routes", f"s:{user}", check=False)
            return
        _check_route(user, target)
        self.routes[user] = target
        if self.alive():
            self.rpc("htable.sets", "routes", f"s:{user}", f"s:{target}")

    def log_text(self) -> str:
        return self.proc.log_text()


def _user(aor: str) -> str:
    """The user part of ``sip:user@host`` (or ``aor`` itself when it is a bare user)."""
    user = aor.split(":", 1)[1] if aor.startswith(("sip:", "sips:")) else aor
    return user.split("@", 1)[0]


def _check_route(user: str, target: str) -> None:
    if not (user == "*" or _SAFE.match(user)):
        raise ValueError(f"unsupported route user {user!r}")
    if target.startswith("@"):
        if not _SAFE.match(target[1:]):
            raise ValueError(f"unsupported AOR in route target {target!r}")
    elif not re.fullmatch(r"127\.\d+\.\d+\.\d+:\d+(;transport=(udp|tcp))?", target):
        raise ValueError(f"route target must be a loopback host:port or @AOR, not {target!r}")
