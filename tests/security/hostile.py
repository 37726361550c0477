"""A hostile SIP peer on loopback: hand-made requests, garbage, floods, idle TCP connections.

Everything here sends to 127.x addresses only (checked) from a socket bound to a chosen
loopback source address, so a test can play a *stranger* (127.0.0.1, which no link admits)
or an *insider* (127.0.0.2, a trunk's allowed source, i.e. the PBX itself). Every function
is bounded in count and time and blocking: tests call them through ``asyncio.to_thread`` so
that the pool's event loop (heartbeats, IPC) keeps running.
"""

from __future__ import annotations

import random
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

STRANGER = "127.0.0.1"
INSIDER = "127.0.0.2"
DOC_NET = "192.0.2.0/24"  # documentation addresses: never routed, never a target here


def _loopback(host: str) -> str:
    if not host.startswith("127."):
        raise ValueError(f"hostile tests stay on loopback, not {host}")
    return host


def request(
    method: str,
    uri: str,
    *,
    src: str = STRANGER,
    sport: int = 5060,
    transport: str = "UDP",
    to: str | None = None,
    body: bytes | str = b"",
    content_type: str | None = None,
    extra: Iterable[str] = (),
    content_length: str | None = None,
) -> bytes:
    """A well-formed request (unless ``content_length``/``extra`` say otherwise)."""
    data = body.encode() if isinstance(body, str) else body
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {src}:{sport};branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:mallory@{src}:{sport}>;tag={secrets.token_hex(4)}",
        f"To: {to or f'<{uri}>'}",
        f"Call-ID: {secrets.token_hex(8)}@{src}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:mallory@{src}:{sport};transport={transport.lower()}>",
        *extra,
    ]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(data) if content_length is None else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def status_of(packet: bytes) -> int | None:
    first = packet.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[0] == b"SIP/2.0" and first[1].isdigit():
        return int(first[1])
    return None


class UdpPeer:
    """One UDP socket bound to ``src`` on loopback; collects every datagram it gets back."""

    def __init__(self, src: str = STRANGER) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((_loopback(src), 0))
        self.src = src
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []

    def send(self, data: bytes, port: int, host: str = "127.0.0.1") -> None:
        self.sock.sendto(data, (_loopback(host), port))

    def drain(self, quiet_s: float = 0.3, max_s: float = 3.0) -> list[bytes]:
        """Read until nothing came for ``quiet_s`` (or ``max_s`` passed); what came."""
        got: list[bytes] = []
        deadline = time.monotonic() + max_s
        self.sock.settimeout(quiet_s)
        while time.monotonic() < deadline:
            try:
                got.append(self.sock.recv(65535))
            except (TimeoutError, ConnectionRefusedError):
                break
        self.received += got
        return got

    def ask(self, data: bytes, port: int, timeout_s: float = 2.0) -> int | None:
        """Send one request; the first *final* status that comes back (None: silence)."""
        self.send(data, port)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                packet = self.sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                return None
            self.received.append(packet)
            status = status_of(packet)
            if status is not None and status >= 200:
                return status
        return None

    def statuses(self) -> list[int]:
        return [s for s in map(status_of, self.received) if s is not None]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tcp_exchange(
    data: bytes, port: int, src: str = STRANGER, timeout_s: float = 2.0,
    connect_timeout_s: float = 4.0,
) -> tuple[bytes, str]:
    """Connect from ``src``, send ``data`` (as much as the peer takes), read until the
    peer closes or ``timeout_s``; (what came back, how it ended). The connect timeout is
    longer: pjsip's listen backlog is 5, and a SYN it drops is retried after a second."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_loopback(src), 0))
        s.settimeout(connect_timeout_s)
        try:
            s.connect(("127.0.0.1", port))
            s.settimeout(timeout_s)
            s.sendall(data)
        except OSError as e:
            return b"", f"send: {type(e).__name__}"
        got = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65535)
            except TimeoutError:
                return got, "timeout"
            except OSError as e:
                return got, f"recv: {type(e).__name__}"
            if not chunk:
                return got, "closed"
            got += chunk
            if b"\r\n\r\n" in got:  # one response head is enough
                return got, "answered"
        return got, "timeout"


class IdleTcp:
    """TCP connections that send nothing. :meth:`open` blocks (call it in a thread)."""

    def __init__(self, port: int, src: str = STRANGER) -> None:
        self.port = port
        self.src = _loopback(src)
        self.socks: list[socket.socket] = []

    def open(self, count: int, max_s: float = 20.0) -> int:
        """Open up to ``count`` more (within ``max_s``, giving up after 3 failed connects);
        how many are open."""
        failures = 0
        deadline = time.monotonic() + max_s
        while len(self.socks) < count and failures < 3 and time.monotonic() < deadline:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(4.0)
            try:
                s.bind((self.src, 0))
                s.connect(("127.0.0.1", self.port))
            except OSError:
                s.close()
                failures += 1
                continue
            self.socks.append(s)
        return len(self.socks)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()


@dataclass
class FloodReport:
    udp_packets: int = 0
    udp_bytes: int = 0
    tcp_connections: int = 0
    tcp_bytes: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)  # stranger's answers by status
    insider_statuses: list[int] = field(default_factory=list)  # the PBX's, each status once
    tcp_endings: dict[str, int] = field(default_factory=dict)

    def count(self, statuses: Iterable[int]) -> None:
        for s in statuses:
            self.statuses[s] = self.statuses.get(s, 0) + 1


BAD_URIS = (
    "sip:", "sip:@", "sip:@@@", "sip:[::1", "sip:100@127.0.0.1:99999", "sip:100@127.0.0.1:-1",
    "sip:100@;;;=;=", "sip:%00%ff@127.0.0.1", "sips:100@" + "a" * 3000, "http://127.0.0.1/",
    "sip:100@127.0.0.1;bridge-link=", "sip:100@127.0.0.1;bridge-link=" + "x" * 500,
    "tel:+1-800-" + "9" * 200, "sip:100@127.0.0.1:\u00b2", "<sip:100@127.0.0.1>",
)

BROKEN_SDPS = (
    "v=0\r\no=garbage\r\nm=audio x RTP\r\n",
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 999.1.1.1\r\nt=0 0\r\n"
    "m=audio 70000 RTP/AVP 0\r\n",
    "v=0\r\n" + "a=" + "x" * 3000 + "\r\n",
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + "m=audio 4000 RTP/AVP 0\r\n" * 60,
    "\x00\x01\x02 not sdp at all",
)


def udp_corpus(
    port: int, src: str, sport: int, rng: random.Random, burst: bool = True
) -> list[bytes]:
    """Hostile datagrams for a worker at 127.0.0.1:``port`` (deterministic for a seed);
    ``burst`` adds 300 well-formed requests (a scan's worth)."""
    target = f"sip:100@127.0.0.1:{port}"
    good = request("INVITE", target, src=src, sport=sport, content_type="application/sdp",
                   body=BROKEN_SDPS[1])
    out: list[bytes] = []
    out += [rng.randbytes(rng.randrange(1, 1400)) for _ in range(150)]  # garbage
    out += [good[: rng.randrange(1, len(good))] for _ in range(100)]  # truncated requests
    out += [b"", b"\r\n", b"\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n", b"INVITE\r\n\r\n"]
    for n in (5000, 20000, 60000):  # huge headers (past PJSIP_MAX_PKT_LEN = 4000)
        out.append(request("OPTIONS", target, src=src, sport=sport,
                           extra=[f"X-Huge: {'A' * n}"]))
    out.append(request("OPTIONS", target, src=src, sport=sport,
                       extra=[f"Via: SIP/2.0/UDP 127.0.0.1:{i}" for i in range(1, 300)]))
    for cl in ("5000", "-1", "abc", "99999999999999999999", "0x10", " "):  # bad Content-Length
        out.append(request("MESSAGE", target, src=src, sport=sport, content_type="text/plain",
                           body="hello", content_length=cl))
    for uri in BAD_URIS:  # invalid Request-URIs and To URIs
        out.append(request("INVITE", uri, src=src, sport=sport, to=f"<{target}>"))
        out.append(request("OPTIONS", target, src=src, sport=sport, to=f"<{uri}>"))
    for sdp in BROKEN_SDPS:
        out.append(request("INVITE", target, src=src, sport=sport,
                           content_type="application/sdp", body=sdp))
    out.append(request("MESSAGE", target, src=src, sport=sport, content_type="text/plain",
                       body=b"x" * 60000))  # the largest MESSAGE a datagram can carry
    if burst:
        out += [request(m, target, src=src, sport=sport)
                for m in ("INVITE", "OPTIONS", "MESSAGE", "REGISTER", "SUBSCRIBE")
                for _ in range(60)]
    return out
