"""ICE helpers of the WebRTC leg: scoped host addresses, server lists, candidate parsing."""

from __future__ import annotations

import asyncio

import aioice.ice
import pytest

from bridge.media import ice
from bridge.media.errors import MediaError, SdpError
from bridge.media.leg import IceServer
from bridge.media.webrtc import WebRtcLeg


async def test_host_addresses_are_scoped_to_the_context() -> None:
    with ice.host_addresses(["127.0.0.1", "::1"]):
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]

        async def gather() -> list[str]:  # as aiortc gathers: in a task started from here
            return aioice.ice.get_host_addresses(True, False)

        assert await asyncio.create_task(gather()) == ["127.0.0.1"]
    outside = aioice.ice.get_host_addresses(True, False)
    assert "127.0.0.1" not in outside  # aioice's own enumeration again


async def test_concurrent_task_without_scope_keeps_default() -> None:
    seen: list[list[str]] = []

    async def other() -> None:
        seen.append(aioice.ice.get_host_addresses(True, False))

    task_outside = asyncio.create_task(other())
    with ice.host_addresses(["127.0.0.1"]):
        await task_outside
    assert "127.0.0.1" not in seen[0]


def test_bad_addresses_and_servers_raise() -> None:
    with pytest.raises(MediaError, match="not an IP address"), ice.host_addresses(["localhost"]):
        pass
    with pytest.raises(MediaError, match="ICE server URL"):
        ice.rtc_ice_servers([IceServer(("http://turn.example",))])
    servers = ice.rtc_ice_servers([IceServer.from_dict(
        {"uris": ["turn:turn.example:3478?transport=udp"], "username": "u", "password": "p"})])
    assert servers[0].urls == ["turn:turn.example:3478?transport=udp"]
    assert servers[0].username == "u" and servers[0].credential == "p"


def test_parse_candidate() -> None:
    c = ice.parse_candidate({
        "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host generation 0 ufrag x",
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "x"})
    assert c is not None and (c.ip, c.port, c.type, c.sdpMid) == ("127.0.0.1", 5000, "host", "0")
    assert ice.parse_candidate({"candidate": ""}) is None
    for bad in ({"candidate": "candidate:1 1 udp"}, {"candidate": 5}, {}):
        with pytest.raises(SdpError):
            ice.parse_candidate(bad)


def test_leg_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="clock_rate"):
        WebRtcLeg([], ["127.0.0.1"], ["PCMU"], 44100)
    with pytest.raises(ValueError, match="not supported by aiortc"):
        WebRtcLeg([], ["127.0.0.1"], ["AMR"], 8000)
    with pytest.raises(MediaError, match="not an IP address"):
        WebRtcLeg([], ["eth0"], ["PCMU"], 8000)


async def test_hooks_do_not_stack_up() -> None:
    """The leg's hook and the test peer's are each installed once, whatever the order."""
    from tests.harness.rtc_peer import loopback_only

    for _ in range(3):
        with ice.host_addresses(["127.0.0.1"]):
            pass
        with loopback_only():
            pass
    depth, f = 0, aioice.ice.get_host_addresses
    while hasattr(f, "__wrapped__") or f.__closure__:
        inner = getattr(f, "__wrapped__", None) or next(
            (c.cell_contents for c in f.__closure__ or () if callable(c.cell_contents)), None)
        if inner is None:
            break
        f, depth = inner, depth + 1
    assert depth <= 2
