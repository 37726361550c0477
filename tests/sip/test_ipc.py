"""The IPC protocol: every message survives the wire, frames over a real socketpair."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import types
import typing

import pytest

from bridge.sip import ipc
from bridge.sip.config import LinkConfig, ListenAddress, SipConfig


def _sample(tp: typing.Any) -> typing.Any:
    origin = typing.get_origin(tp)
    if tp is int:
        return 7
    if tp is float:
        return 1.5
    if tp is bool:
        return True
    if tp is str:
        return "x é"
    if origin is typing.Literal:
        return typing.get_args(tp)[0]
    if origin is tuple:
        args = typing.get_args(tp)
        return (_sample(args[0]),) if args[-1] is Ellipsis else tuple(_sample(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in typing.get_args(tp) if a is not type(None)))
    if dataclasses.is_dataclass(tp):
        return _instance(tp)
    raise AssertionError(f"no sample for {tp}")


def _instance(cls: type) -> typing.Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs[f.name] = _sample(hints[f.name])
    if cls is LinkConfig:
        kwargs.update(company="acme", mode="register", domain="pbx", username="u",
                      password="s3cret")
    return cls(**kwargs)


@pytest.mark.parametrize("name", sorted(ipc.message_types()))
def test_every_message_round_trips(name: str) -> None:
    cls = ipc.message_types()[name]
    msg = _instance(cls)
    data = ipc.encode(msg)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert ipc.decode(data[4:]) == msg


def test_configure_carries_nested_config_and_hides_password_in_repr() -> None:
    link = LinkConfig(company="acme", mode="register", domain="pbx.example", username="matrix",
                      password="hunter2", allowed_sources=("10.0.0.0/8",))
    sip = SipConfig(workers=2, listen=(ListenAddress("udp", "127.0.0.1", 5070),), links=(link,))
    msg = ipc.Configure(config=sip.for_worker(1))
    back = ipc.decode(ipc.encode(msg)[4:])
    assert back == msg
    assert back.config.links[0].password == "hunter2"
    assert "hunter2" not in repr(msg)
    assert "hunter2" not in repr(sip)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown IPC message type"):
        ipc.decode(b'{"type": "Nope"}')
    with pytest.raises(TypeError):
        ipc.encode(object())


async def test_channel_over_socketpair() -> None:
    a, b = socket.socketpair()
    left = await ipc.Channel.from_socket(a)
    right = await ipc.Channel.from_socket(b)
    msgs = [ipc.Ping(seq=i) for i in range(100)] + [
        ipc.SendMessage(req=1, company="acme", target="101", text="ü" * 3000, from_user="a")
    ]
    for m in msgs:
        left.send(m)
    got = [await asyncio.wait_for(right.recv(), 5) for _ in msgs]
    assert got == msgs
    await left.close()
    with pytest.raises(ipc.ChannelClosed):
        await asyncio.wait_for(right.recv(), 5)
    await right.close()
