"""ICE for the aiortc leg: which host addresses are gathered, STUN/TURN servers, and the
Matrix ``m.call.candidates`` candidate format.

**Host candidates.** aioice 0.13 gathers a host candidate on every address that
``aioice.ice.get_host_addresses()`` returns: all interfaces except 127.0.0.1. The bridge needs
them configurable (the media addresses of DESIGN §8; 127.0.0.1 in tests, where the LAN address
must never be used). aioice has no option for it, so :func:`host_addresses` wraps that one
module-level function once per process; the wrapper returns the addresses set for the current
``contextvars`` context and falls back to aioice's own enumeration everywhere else. aiortc
gathers inside ``RTCPeerConnection.setLocalDescription()``, in tasks created from the caller's
context, so ``with host_addresses([...]): await pc.setLocalDescription(...)`` scopes the choice
to one peer connection and leaves every other aioice user in the process untouched. The
wrapper checks the function's signature when installed and refuses to run on an aioice whose
function changed (:class:`~bridge.media.errors.MediaError` naming the version).
"""

from __future__ import annotations

import contextvars
import inspect
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import aioice
import aioice.ice
from aiortc import RTCIceCandidate, RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri
from aiortc.sdp import candidate_from_sdp

from bridge.media.errors import MediaError, SdpError
from bridge.media.leg import IceServer

_HOSTS: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "bridge_media_host_addresses", default=None
)
_installed: list[bool] = []


def install_hook() -> None:
    """Wrap ``aioice.ice.get_host_addresses`` once per process (idempotent)."""
    if _installed:
        return
    current = aioice.ice.get_host_addresses
    params = list(inspect.signature(current).parameters)
    if params != ["use_ipv4", "use_ipv6"]:
        raise MediaError(
            f"aioice {getattr(aioice, '__version__', '?')}: get_host_addresses{params} is not "
            "the (use_ipv4, use_ipv6) function the host-address hook wraps"
        )

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        hosts = _HOSTS.get()
        if hosts is None:
            return list(current(use_ipv4, use_ipv6))
        return [h for h in hosts if (use_ipv6 if ":" in h else use_ipv4)]

    get_host_addresses.__wrapped__ = current  # type: ignore[attr-defined]
    setattr(aioice.ice, "get_host_addresses", get_host_addresses)  # noqa: B010
    _installed.append(True)


def check_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    out = []
    for a in addresses:
        try:
            out.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise MediaError(f"ICE host address {a!r} is not an IP address") from None
    return tuple(out)


@contextmanager
def host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Within this block (and tasks started from it), aioice gathers host candidates on
    exactly ``addresses``; an empty sequence keeps aioice's own choice."""
    install_hook()
    if not addresses:
        yield
        return
    token = _HOSTS.set(check_addresses(addresses))
    try:
        yield
    finally:
        _HOSTS.reset(token)


def rtc_ice_servers(servers: Sequence[IceServer]) -> list[RTCIceServer]:
    """aiortc's server list; always explicit, so aiortc's default public STUN server is never
    used. aioice uses the first STUN and the first TURN URL it supports."""
    out = []
    for server in servers:
        for url in server.urls:
            try:
                parse_stun_turn_uri(url)
            except ValueError as exc:
                raise MediaError(f"ICE server URL {url!r}: {exc}") from None
        out.append(
            RTCIceServer(
                urls=list(server.urls), username=server.username, credential=server.credential
            )
        )
    return out


def parse_candidate(data: Mapping[str, Any]) -> RTCIceCandidate | None:
    """A Matrix/WebRTC candidate ``{candidate, sdpMid, sdpMLineIndex}``; None for the
    end-of-candidates marker ``{"candidate": ""}``."""
    if not isinstance(data, Mapping):
        raise SdpError(f"ICE candidate is not an object but {type(data).__name__}")
    text = data.get("candidate")
    if not isinstance(text, str):
        raise SdpError("ICE candidate has no 'candidate' string")
    text = text.strip()
    if not text:
        return None
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    bits = text.split()
    if len(bits) < 8 or bits[6] != "typ" or len(text) > 1024:
        raise SdpError(f"malformed ICE candidate: {data.get('candidate', '')[:100]!r}")
    try:
        candidate = candidate_from_sdp(text)
    except (ValueError, AssertionError, IndexError) as exc:
        raise SdpError(f"malformed ICE candidate {text[:100]!r}: {exc}") from None
    mid = data.get("sdpMid")
    index = data.get("sdpMLineIndex")
    candidate.sdpMid = str(mid) if mid is not None else None
    candidate.sdpMLineIndex = index if isinstance(index, int) else None
    return candidate


def candidate_key(c: RTCIceCandidate) -> tuple[Any, ...]:
    return (c.protocol.lower(), c.ip, c.port, c.component, c.type)
