"""The typed IPC protocol between the controller's pool and a SIP/media worker.

Wire format: a 4-byte big-endian length, then one JSON object ``{"type": <class name>, ...}``.
The channel is a socketpair whose child end is passed to the worker (``--fd N``); stdout is
never used. Every message is a frozen dataclass listed here; nothing else goes over the wire.

Controller → worker: ``Configure`` (first), ``Ping``, commands carrying a ``req`` id. The
worker answers every command with exactly one reply carrying the same ``req``: ``Reply``, or a
typed answer (``MessageOutcome``, ``AudioReport``). Worker → controller: ``Ready``/``Fatal``,
``Pong``, replies, and unsolicited events (link states, incoming calls and messages, call
progress, DTMF, log lines).

Call ids are strings chosen by whoever creates the call (the pool for outbound calls, the
worker for inbound ones) and unique over the pool's life.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin

from .config import LinkConfig, WorkerConfig

MAX_FRAME = 1 << 20
_HEADER = struct.Struct(">I")
_REGISTRY: dict[str, type[Any]] = {}

DtmfMethod = Literal["auto", "rfc4733", "info"]


_T = typing.TypeVar("_T")


@typing.dataclass_transform(frozen_default=True, kw_only_default=True)
def _message(cls: type[_T]) -> type[_T]:
    dc = dataclass(frozen=True, kw_only=True)(cls)
    _REGISTRY[cls.__name__] = dc
    return dc


# ---------------------------------------------------------------- controller → worker


@_message
class Configure:
    config: WorkerConfig


@_message
class SetLink:
    """Add or replace a company's PBX link at run time (re-registers when ``registers``).
    ``registers`` is true on the link's home worker (whatever its mode), which also watches
    the extensions' states when the link's ``presence`` is on."""

    req: int
    link: LinkConfig
    registers: bool


@_message
class WatchExtensions:
    """To a link's home worker: watch the states of ``link.extensions`` by ``link.presence``
    (after an extension was added or removed at run time; the account stays as it is)."""

    req: int
    link: LinkConfig


@_message
class DropLink:
    """Remove a company's PBX link at run time (unregisters it first)."""

    req: int
    company: str


@_message
class Ping:
    seq: int


@_message
class MakeCall:
    req: int
    call: str
    company: str
    target: str
    from_user: str
    from_display: str = ""


@_message
class RingCall:
    """Send 180 Ringing on an inbound call."""

    req: int
    call: str


@_message
class AnswerCall:
    req: int
    call: str


@_message
class RejectCall:
    req: int
    call: str
    status: int = 486
    reason: str = ""


@_message
class HangupCall:
    """BYE when answered, CANCEL while an outbound call rings, 603 for an unanswered inbound."""

    req: int
    call: str


@_message
class SendDtmf:
    req: int
    call: str
    digits: str
    method: DtmfMethod = "auto"


@_message
class SendMessage:
    req: int
    company: str
    target: str
    text: str
    from_user: str
    from_display: str = ""


@_message
class PlayTone:
    """Replace the call's outgoing audio by a sine tone (``freq_hz`` 0 stops it)."""

    req: int
    call: str
    freq_hz: float
    level_dbfs: float = -12.0


@_message
class ProbeAudio:
    """Record the call's incoming audio for ``seconds`` and analyse it (→ ``AudioReport``)."""

    req: int
    call: str
    seconds: float


@_message
class HoldCall:
    """Hold (re-INVITE with a=sendonly) or resume (a=sendrecv) an answered call."""

    req: int
    call: str
    on: bool = True


@_message
class Shutdown:
    """End every call, unregister, exit cleanly (the worker replies, then exits)."""

    req: int


# ---------------------------------------------------------------- worker → controller


@_message
class BoundTransport:
    transport: str
    host: str
    port: int


@_message
class Ready:
    index: int
    pid: int
    max_calls: int
    transports: tuple[BoundTransport, ...]
    frame_copy: str


@_message
class Fatal:
    error: str


@_message
class Pong:
    seq: int
    #: milliseconds since the pjsua2 owner loop last went round (a stall shows here).
    pj_loop_age_ms: int
    calls: int


@_message
class Reply:
    req: int
    ok: bool = True
    code: str = ""
    error: str = ""
    value: str = ""


@_message
class MessageOutcome:
    req: int
    status: int
    reason: str


@_message
class AudioReport:
    req: int
    freq_hz: float
    level_dbfs: float
    frames: int


@_message
class LinkState:
    company: str
    state: Literal["registering", "registered", "failed", "unregistered"]
    status: int = 0
    reason: str = ""
    expires_s: int = 0
    #: seconds until the next attempt after a failure (0: none scheduled).
    retry_in_s: float = 0.0


@_message
class ExtensionState:
    """An extension's state as its company's PBX tells it (``presence`` on, home worker):
    busy while it has a call, offline when its subscription failed or ended (``reason``
    says why, e.g. "404 Not Found")."""

    company: str
    extension: str
    state: Literal["online", "busy", "offline"]
    reason: str = ""


@_message
class IncomingCall:
    call: str
    company: str
    caller_user: str
    caller_display: str
    caller_uri: str
    asserted_identity: str
    target: str
    to_user: str
    source: str
    sip_call_id: str


@_message
class CallRinging:
    call: str
    status: int
    reason: str


@_message
class CallEarlyMedia:
    call: str
    status: int


@_message
class CallAnswered:
    call: str
    codec: str


@_message
class CallEnded:
    call: str
    status: int
    reason: str
    #: "local" when we ended it (hangup, reject, shutdown), "remote" otherwise.
    by: Literal["local", "remote"]


@_message
class CallDtmf:
    call: str
    digit: str
    method: Literal["rfc4733", "info", "other"]


@_message
class CallHeld:
    """Hold changed: ``by`` "local" (our re-INVITE took effect) or "remote" (the PBX's
    re-INVITE with a=sendonly/inactive, or its resume)."""

    call: str
    by: Literal["local", "remote"]
    on: bool


@_message
class CallTransferred:
    """The call now talks to another party (same call id, same audio): after a REFER from the
    PBX (``kind`` "refer", our new INVITE was answered and the old dialog is being ended) or
    an INVITE with Replaces (``kind`` "replaces")."""

    call: str
    #: display string of the new party: ``Name <sip:…>`` or ``sip:…``
    to: str
    kind: Literal["refer", "replaces"]
    #: SIP Call-ID of the new dialog
    sip_call_id: str = ""


@_message
class IncomingMessage:
    company: str
    from_user: str
    from_display: str
    from_uri: str
    to_user: str
    content_type: str
    text: str
    source: str
    #: non-zero: the worker holds the request and answers it with ``AnswerMessage``
    key: int = 0


@_message
class AnswerMessage:
    """The final status for a MESSAGE the worker holds (200 once delivered on Matrix)."""

    req: int
    key: int
    status: int


@_message
class LogLine:
    level: int
    logger: str
    message: str
    #: the worker's call ID when the line is about a call ("" otherwise).
    call: str = ""


Command = (
    MakeCall | RingCall | AnswerCall | RejectCall | HangupCall | SendDtmf | SendMessage
    | PlayTone | ProbeAudio | HoldCall | Shutdown | SetLink | DropLink | AnswerMessage
    | WatchExtensions
)
CallEvent = (
    CallRinging | CallEarlyMedia | CallAnswered | CallEnded | CallDtmf | CallHeld
    | CallTransferred
)


# ---------------------------------------------------------------- codec


def _to_plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _build(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(tp)
    if isinstance(tp, type) and is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        known = {f.name for f in fields(tp)}
        kwargs = {k: _build(hints[k], v) for k, v in value.items() if k in known}
        return tp(**kwargs)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in value)
        return tuple(_build(a, v) for a, v in zip(args, value, strict=True))
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None):
                continue
            if isinstance(arg, type) and is_dataclass(arg) and isinstance(value, dict):
                return _build(arg, value)
            if get_origin(arg) is tuple and isinstance(value, list):
                return _build(arg, value)
        return value
    return value


def encode(msg: Any) -> bytes:
    """One framed message, ready to write."""
    name = type(msg).__name__
    if _REGISTRY.get(name) is not type(msg):
        raise TypeError(f"{name} is not an IPC message")
    body = dict(_to_plain(msg))
    body["type"] = name
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"IPC message {name} is {len(data)} bytes, over {MAX_FRAME}")
    return _HEADER.pack(len(data)) + data


def decode(data: bytes) -> Any:
    """The message of one frame body (without its length header)."""
    obj = json.loads(data)
    name = obj.pop("type", None)
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown IPC message type {name!r}")
    return _build(cls, obj)


def message_types() -> dict[str, type[Any]]:
    return dict(_REGISTRY)


class ChannelClosed(ConnectionError):
    """The other end went away."""


class Channel:
    """Framed messages over an asyncio stream pair (one per end of the socketpair)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False

    @classmethod
    async def from_socket(cls, sock: Any) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_FRAME + 16)
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        return self._closed or self._writer.is_closing()

    def send(self, msg: Any) -> None:
        """Queue one message; never blocks (the event loop writes it out)."""
        if self.closed:
            raise ChannelClosed("IPC channel is closed")
        self._writer.write(encode(msg))

    async def drain(self) -> None:
        if not self.closed:
            await self._writer.drain()

    async def recv(self) -> Any:
        """The next message; raises :class:`ChannelClosed` at end of stream."""
        try:
            header = await self._reader.readexactly(_HEADER.size)
            (length,) = _HEADER.unpack(header)
            if length > MAX_FRAME:
                raise ChannelClosed(f"IPC frame of {length} bytes is over the limit")
            body = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self._closed = True
            raise ChannelClosed(str(e) or "end of stream") from None
        return decode(body)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def replace_req(msg: Any, req: int) -> Any:
    """A copy of a command with another request id."""
    return dataclasses.replace(msg, req=req)
