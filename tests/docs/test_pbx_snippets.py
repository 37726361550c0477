"""The Kamailio config in docs/pbx-kamailio.md works with this machine's Kamailio (5.6).

The test takes the one fenced block of the document that holds the marker comment, points its
``listen`` at 127.0.0.1 and a free port and its ctl socket into a folder of its own, runs
``kamailio -c`` on it, then starts it (``-DD -E -Y <own folder>``, stopped by its PID; the
system Kamailio and /etc/kamailio are never touched) and plays the bridge and two phones over
UDP, the way the bridge's pjsua2 and a phone send their requests:

- the bridge registers as ``matrix`` with digest auth (qop=auth), a wrong password is refused;
- a phone's MESSAGE to a mapped number (2001) and INVITE to ``alice=example.org`` reach the
  bridge's registered Contact with the dialled user in the Request-URI and the Contact's
  ``bridge-link`` parameter kept (how the bridge tells which company a request is for);
- the bridge's MESSAGE and INVITE from ``alice=example.org`` (authenticated as ``matrix``,
  with the Route header it sends when pbx.domain is not the registrar's host) reach phone 101;
- a phone that spoofs another From, an unknown and an unregistered number are refused, and
  Matrix numbers get 480 while the bridge is not registered.

The documented passwords and domain are read from the config itself.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.peers.ports import LOOPBACK, free_port, sip_options
from tests.peers.procs import Process, ProcessError, wait_until

KAMAILIO = "/usr/sbin/kamailio"
DOC = Path(__file__).resolve().parents[2] / "docs" / "pbx-kamailio.md"
MARKER = "# matrix-sip-bridge example kamailio.cfg"
BRIDGE_USER = "matrix"
COMPANY = "acme"


# ---------------------------------------------------------------------------- the config


def doc_config() -> str:
    """The one fenced block of the document that holds the marker comment."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    found = [b for b in blocks if MARKER in b]
    assert len(found) == 1, f"{DOC} must hold exactly one block with {MARKER!r}"
    return found[0]


def _substdef(cfg: str, name: str) -> str:
    m = re.search(rf'^#!substdef "!{name}!([^!]*)!g"$', cfg, re.MULTILINE)
    assert m, f"the config has no #!substdef for {name}"
    return m.group(1)


def localize(cfg: str, port: int, rundir: Path) -> str:
    """Loopback, our port, our ctl socket; fails if anything still points at the system's."""
    out, n = re.subn(r'^(#!substdef "!PBX_IP!)[^!]*(!g")$', rf"\g<1>{LOOPBACK}\2", cfg,
                     flags=re.MULTILINE)
    assert n == 1
    out, n = re.subn(r'^(#!substdef "!PBX_PORT!)[^!]*(!g")$', rf"\g<1>{port}\2", out,
                     flags=re.MULTILINE)
    assert n == 1
    out, n = re.subn(r"unix:/run/kamailio/kamailio_ctl", f"unix:{rundir}/kamailio_ctl", out)
    assert n == 1, "the ctl socket line changed: update this test"
    for leftover in ("/run/kamailio", "/etc/kamailio", "5060", "192.0.2."):
        assert leftover not in out, f"{leftover} left in the test config"
    return out


def passwords(cfg: str) -> dict[str, str]:
    return dict(re.findall(r'^\s*\$sht\(subs=>([^)]+)\) = "([^"]*)";', cfg, re.MULTILINE))


# ---------------------------------------------------------------------------- a tiny SIP UA


@dataclass
class Msg:
    first: str
    headers: list[tuple[str, str]]
    body: str
    source: tuple[str, int]

    @classmethod
    def parse(cls, data: bytes, source: tuple[str, int]) -> Msg:
        head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return cls(lines[0], headers, body, source)

    def header(self, name: str) -> str:
        for n, v in self.headers:
            if n == name:
                return v
        return ""

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    @property
    def status(self) -> int:
        return int(self.first.split()[1]) if self.first.startswith("SIP/2.0 ") else 0

    @property
    def method(self) -> str:
        return "" if self.first.startswith("SIP/2.0 ") else self.first.split()[0]

    @property
    def ruri(self) -> str:
        return self.first.split()[1]

    @property
    def cseq(self) -> tuple[int, str]:
        num, method = self.header("cseq").split()
        return int(num), method


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest(challenge: str, method: str, uri: str, user: str, password: str) -> str:
    """An RFC 2617 Authorization value for a Digest challenge (qop=auth when offered)."""
    params = {k: v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))',
                                                       challenge.split(" ", 1)[1])}
    realm, nonce = params["realm"], params["nonce"]
    ha1, ha2 = _md5(f"{user}:{realm}:{password}"), _md5(f"{method}:{uri}")
    out = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}"'
    if "auth" in params.get("qop", "").split(","):
        cnonce, nc = secrets.token_hex(8), "00000001"
        response = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        out += f', response="{response}", algorithm=MD5, cnonce="{cnonce}", nc={nc}, qop=auth'
    else:
        out += f', response="{_md5(f"{ha1}:{nonce}:{ha2}")}", algorithm=MD5'
    if "opaque" in params:
        out += f', opaque="{params["opaque"]}"'
    return out


@dataclass
class Ua:
    """One UDP SIP user agent on 127.0.0.1 that sends through the proxy on ``proxy_port``."""

    user: str
    password: str
    domain: str
    proxy_port: int
    sock: socket.socket = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self._cseq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    @property
    def contact(self) -> str:
        params = f";bridge-link={COMPANY}" if self.user == BRIDGE_USER else ""
        return f"sip:{self.user}@{LOOPBACK}:{self.port}{params}"

    def recv(self, timeout: float) -> Msg | None:
        self.sock.settimeout(timeout)
        try:
            data, source = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return Msg.parse(data, source)

    def _send(self, text: str, to: tuple[str, int] | None = None) -> None:
        self.sock.sendto(text.encode(), to or (LOOPBACK, self.proxy_port))

    def request(self, method: str, ruri: str, *, to: str | None = None, from_user: str | None = None,
                headers: tuple[str, ...] = (), body: str = "", timeout: float = 5.0,
                password: str | None = None) -> Msg:
        """Send a request, answer one 401/407 with digest credentials, return the final
        response (and ACK it when the request is an INVITE)."""
        call_id = f"{secrets.token_hex(8)}@{LOOPBACK}"
        from_tag = secrets.token_hex(4)
        frm = f"<sip:{from_user or self.user}@{self.domain}>;tag={from_tag}"
        to = to or f"<{ruri}>"
        auth_header = ""
        tried_auth = False
        while True:
            cseq = next(self._cseq)
            branch = f"z9hG4bK{secrets.token_hex(8)}"
            via = f"SIP/2.0/UDP {LOOPBACK}:{self.port};branch={branch};rport"
            lines = [
                f"{method} {ruri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70", f"From: {frm}",
                f"To: {to}", f"Call-ID: {call_id}", f"CSeq: {cseq} {method}",
                f"Contact: <{self.contact}>", *headers,
            ]
            if auth_header:
                lines.append(auth_header)
            if body:
                lines.append("Content-Type: text/plain")
            lines.append(f"Content-Length: {len(body.encode())}")
            self._send("\r\n".join(lines) + "\r\n\r\n" + body)
            final = self._final(cseq, method, timeout)
            if method == "INVITE":
                self._send("\r\n".join([
                    f"ACK {ruri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70", f"From: {frm}",
                    f"To: {final.header('to')}", f"Call-ID: {call_id}", f"CSeq: {cseq} ACK",
                    "Content-Length: 0",
                ]) + "\r\n\r\n")
            if final.status in (401, 407) and not tried_auth:
                tried_auth = True
                name = "www-authenticate" if final.status == 401 else "proxy-authenticate"
                value = digest(final.header(name), method, ruri, self.user,
                               password if password is not None else self.password)
                auth_header = ("Authorization: " if final.status == 401
                               else "Proxy-Authorization: ") + value
                continue
            return final

    def _final(self, cseq: int, method: str, timeout: float) -> Msg:
        while True:
            msg = self.recv(timeout)
            if msg is None:
                raise TimeoutError(f"{self.user}: no final response to {method} (CSeq {cseq})")
            if msg.status >= 200 and msg.cseq == (cseq, method):
                return msg

    def register(self, expires: int = 300, password: str | None = None) -> Msg:
        """REGISTER as the bridge's pjsua2 does: Request-URI = the registrar's address."""
        aor = f"<sip:{self.user}@{self.domain}>"
        return self.request("REGISTER", f"sip:{LOOPBACK}:{self.proxy_port}", to=aor,
                            headers=(f"Expires: {expires}",), password=password)

    def answer(self, method: str, status: int, timeout: float = 5.0) -> Msg:
        """Wait for a ``method`` request and answer it with ``status``; returns the request."""
        while True:
            msg = self.recv(timeout)
            if msg is None:
                raise TimeoutError(f"{self.user}: no {method} arrived")
            if msg.method == method:
                break
        reason = {200: "OK", 486: "Busy Here"}.get(status, "Whatever")
        to = msg.header("to")
        if ";tag=" not in to:
            to += f";tag={secrets.token_hex(4)}"
        lines = [f"SIP/2.0 {status} {reason}", *(f"Via: {v}" for v in msg.all("via")),
                 f"From: {msg.header('from')}", f"To: {to}", f"Call-ID: {msg.header('call-id')}",
                 f"CSeq: {msg.header('cseq')}", "Content-Length: 0"]
        self._send("\r\n".join(lines) + "\r\n\r\n", msg.source)
        return msg


# ---------------------------------------------------------------------------- fixtures


@dataclass
class Pbx:
    port: int
    domain: str
    users: dict[str, str]
    proc: Process

    def ua(self, user: str) -> Ua:
        return Ua(user, self.users[user], self.domain, self.port)


@pytest.fixture(scope="module")
def pbx() -> Iterator[Pbx]:
    cfg = doc_config()
    # A short folder of our own: the ctl socket path must stay under ~100 characters.
    work = Path(tempfile.mkdtemp(prefix="kamdoc-"))
    try:
        rundir = work / "rt"
        rundir.mkdir()
        port = free_port()
        path = work / "kamailio.cfg"
        path.write_text(localize(cfg, port, rundir))
        check = subprocess.run([KAMAILIO, "-c", "-f", str(path), "-Y", str(rundir)],
                               capture_output=True, text=True, timeout=30, check=False)
        assert check.returncode == 0, f"kamailio -c failed:\n{check.stdout}{check.stderr}"
        proc = Process("kamailio", [KAMAILIO, "-DD", "-E", "-f", str(path), "-Y", str(rundir),
                                    "-m", "32", "-M", "4"], work)
        proc.start()
        try:
            def ready() -> bool:
                if not proc.alive():
                    raise ProcessError(f"kamailio exited:\n{proc.log_tail()}")
                return (sip_options(port, timeout=0.3) or "").startswith("SIP/2.0 200")

            wait_until(ready, 10.0, what="the documented Kamailio config to answer OPTIONS")
            yield Pbx(port, _substdef(cfg, "PBX_DOMAIN"), passwords(cfg), proc)
        finally:
            proc.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def bridge(pbx: Pbx) -> Iterator[Ua]:
    """The bridge, registered as "matrix" (its Contact carries ;bridge-link=acme)."""
    ua = pbx.ua(BRIDGE_USER)
    res = ua.register()
    assert res.status == 200, res.first
    yield ua
    ua.close()


@pytest.fixture(scope="module")
def phone(pbx: Pbx) -> Iterator[Ua]:
    """Extension 101, registered."""
    ua = pbx.ua("101")
    res = ua.register()
    assert res.status == 200, res.first
    yield ua
    ua.close()


def _in_thread(fn: Callable[..., Msg], *args: object) -> Future[Msg]:
    """Run ``fn`` (one UA's side of an exchange) while this thread plays the other side."""
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return fut


# ---------------------------------------------------------------------------- tests


def test_documented_users_are_the_bridge_and_phones() -> None:
    users = passwords(doc_config())
    assert BRIDGE_USER in users and "101" in users, users


def test_bridge_registers_with_digest_auth(pbx: Pbx) -> None:
    ua = pbx.ua(BRIDGE_USER)
    try:
        first = ua.request("REGISTER", f"sip:{LOOPBACK}:{pbx.port}",
                           to=f"<sip:{BRIDGE_USER}@{pbx.domain}>", headers=("Expires: 60",),
                           password="wrong-password")
        assert first.status == 401, "a wrong password must be refused"
        assert 'qop="auth"' in first.header("www-authenticate")
        ok = ua.register(expires=60)
        assert ok.status == 200, ok.first
        contacts = " ".join(ok.all("contact"))
        assert f"bridge-link={COMPANY}" in contacts and str(ua.port) in contacts, contacts
        gone = ua.register(expires=0)
        assert gone.status == 200
    finally:
        ua.close()


def test_phone_message_to_mapped_number_reaches_bridge(pbx: Pbx, bridge: Ua, phone: Ua) -> None:
    got = _in_thread(bridge.answer, "MESSAGE", 200)
    res = phone.request("MESSAGE", f"sip:2001@{pbx.domain}", body="hello from 101")
    req = got.result(5)
    assert res.status == 200, res.first
    assert req.ruri == f"sip:2001@{LOOPBACK}:{bridge.port};bridge-link={COMPANY}"
    assert f"sip:2001@{pbx.domain}" in req.header("to")
    assert f"sip:101@{pbx.domain}" in req.header("from")
    assert req.body == "hello from 101"


def test_phone_call_to_matrix_id_reaches_bridge(pbx: Pbx, bridge: Ua, phone: Ua) -> None:
    got = _in_thread(bridge.answer, "INVITE", 486)
    res = phone.request("INVITE", f"sip:alice=example.org@{pbx.domain}")
    req = got.result(5)
    assert res.status == 486, res.first
    assert req.ruri == f"sip:alice=example.org@{LOOPBACK}:{bridge.port};bridge-link={COMPANY}"
    assert req.all("record-route"), "INVITEs are record-routed"


def test_bridge_message_and_call_reach_phone(pbx: Pbx, bridge: Ua, phone: Ua) -> None:
    # pbx.domain differs from the registrar's host: pjsua2 sends a Route to the proxy.
    route = (f"Route: <sip:{LOOPBACK}:{pbx.port};lr>",)
    got = _in_thread(phone.answer, "MESSAGE", 200)
    res = bridge.request("MESSAGE", f"sip:101@{pbx.domain}", from_user="alice=example.org",
                         headers=route, body="hi 101")
    req = got.result(5)
    assert res.status == 200, res.first
    assert req.ruri == f"sip:101@{LOOPBACK}:{phone.port}"
    assert f"sip:alice=example.org@{pbx.domain}" in req.header("from")
    assert not req.all("route"), "the preloaded Route is removed"
    got = _in_thread(phone.answer, "INVITE", 486)
    res = bridge.request("INVITE", f"sip:101@{pbx.domain}", from_user="alice=example.org",
                         headers=route)
    assert got.result(5).ruri == f"sip:101@{LOOPBACK}:{phone.port}"
    assert res.status == 486, res.first


def test_refusals(pbx: Pbx, bridge: Ua, phone: Ua) -> None:
    spoof = phone.request("MESSAGE", f"sip:2001@{pbx.domain}", from_user="102", body="x")
    assert spoof.status == 403, spoof.first
    assert phone.request("MESSAGE", f"sip:999@{pbx.domain}", body="x").status == 404
    assert phone.request("MESSAGE", f"sip:102@{pbx.domain}", body="x").status == 480
    stranger = Ua("101", "not-the-password", pbx.domain, pbx.port)
    try:
        assert stranger.request("MESSAGE", f"sip:2001@{pbx.domain}", body="x").status == 407
    finally:
        stranger.close()
    # While the bridge is not registered, Matrix users are unavailable.
    assert bridge.register(expires=0).status == 200
    try:
        res = phone.request("MESSAGE", f"sip:2002@{pbx.domain}", body="x")
        assert res.status == 480, res.first
    finally:
        assert bridge.register().status == 200
