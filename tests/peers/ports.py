"""Free ports on 127.0.0.1 (checked on UDP and TCP) and a raw UDP sender.

Other test runs may use this machine at the same time: ports come from the kernel's
ephemeral range (bind to port 0), are checked free for both protocols, and are never handed
out twice by this process.
"""

from __future__ import annotations

import secrets
import socket
import threading

LOOPBACK = "127.0.0.1"

_lock = threading.Lock()
_given: set[int] = set()


def _free(port: int, kinds: tuple[int, ...]) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def free_port(udp: bool = True, tcp: bool = True) -> int:
    """A port that is free on 127.0.0.1 for UDP and TCP (or just the one asked for)."""
    kinds = tuple(k for k, want in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)) if want)
    if not kinds:
        raise ValueError("ask for UDP, TCP or both")
    for _ in range(200):
        with socket.socket(socket.AF_INET, kinds[0]) as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        with _lock:
            if port in _given or not _free(port, kinds):
                continue
            _given.add(port)
            return port
    raise OSError("no free port found on 127.0.0.1")


def free_port_block(size: int) -> int:
    """A port P with P .. P+size-1 all free on 127.0.0.1 for UDP and TCP (for programs such as
    baresip that also bind the ports next to the one they are given, e.g. TLS on SIP+1)."""
    for _ in range(200):
        base = free_port()
        wanted = set(range(base + 1, base + size))
        with _lock:
            if wanted & _given or max(wanted, default=base) > 65535:
                continue
            both = (socket.SOCK_DGRAM, socket.SOCK_STREAM)
            if all(_free(q, both) for q in wanted):
                _given.update(wanted)
                return base
    raise OSError(f"no block of {size} free ports found on 127.0.0.1")


def free_rtp_port() -> int:
    """An even UDP port P with P, P+1 and P+2 free (RTP, RTCP and sipp's second media port)."""
    for _ in range(200):
        base = free_port(udp=True, tcp=False)
        p = base - base % 2
        with _lock:
            wanted = {p, p + 1, p + 2, p + 3}
            if (wanted - {base}) & _given:
                continue
            if all(_free(q, (socket.SOCK_DGRAM,)) for q in wanted if q != base):
                _given.update(wanted)
                return p
    raise OSError("no free RTP port range found on 127.0.0.1")


def send_udp(
    payload: bytes | str,
    port: int,
    host: str = LOOPBACK,
    reply_timeout: float | None = None,
    source_port: int = 0,
) -> bytes | None:
    """Send one datagram to ``host:port`` (loopback only); with ``reply_timeout``, return
    the first datagram that comes back within it (None if none came)."""
    if not host.startswith("127."):
        raise ValueError(f"tests send to loopback only, not {host}")
    data = payload.encode() if isinstance(payload, str) else payload
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, source_port))
        s.sendto(data, (host, port))
        if reply_timeout is None:
            return None
        s.settimeout(reply_timeout)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def sip_options(port: int, host: str = LOOPBACK, timeout: float = 2.0) -> str | None:
    """Send a bare SIP OPTIONS over UDP and return the first response line (None on silence)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        lport = s.getsockname()[1]
        tag = secrets.token_hex(4)
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{lport};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:ping@{LOOPBACK}:{lport}>;tag={tag}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {secrets.token_hex(8)}@{LOOPBACK}\r\n"
            f"CSeq: 1 OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (host, port))
        s.settimeout(timeout)
        try:
            data = s.recv(65535)
        except TimeoutError:
            return None
    return data.decode(errors="replace").split("\r\n", 1)[0]
