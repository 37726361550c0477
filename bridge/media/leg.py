"""The WebRTC leg's interface, shared by its implementations.

The bridge talks to the Matrix side's media through :class:`MediaLeg` only: offer/answer,
candidates, 20 ms PCM frames both ways, DTMF, state callbacks and close. The aiortc
implementation is :class:`bridge.media.webrtc.WebRtcLeg`; a GStreamer ``webrtcbin`` one can
replace it without touching the call layer (DESIGN §4).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server (the shape of WebRTC's ``RTCIceServer``)."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IceServer:
        """Accepts WebRTC's ``{urls, username, credential}`` and the homeserver's
        ``/voip/turnServer`` answer ``{uris, username, password}``."""
        urls = data.get("urls", data.get("uris", ()))
        if isinstance(urls, str):
            urls = (urls,)
        return cls(
            urls=tuple(str(u) for u in urls),
            username=data.get("username"),
            credential=data.get("credential", data.get("password")),
        )


class LegState(enum.StrEnum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass
class MediaStats:
    """Counters of one leg; cheap to read at any time."""

    state: LegState = LegState.NEW
    codec: str | None = None
    clock_rate: int | None = None
    direction: str | None = None
    dtmf: bool = False
    rtp_sent: int = 0
    rtp_received: int = 0
    dtmf_sent: int = 0
    dtmf_received: int = 0
    frames_read: int = 0
    frames_dropped: int = 0
    read_underruns: int = 0
    write_underruns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


StateCallback = Callable[[LegState], None]
DtmfCallback = Callable[[str], None]


class MediaLeg(Protocol):
    """What the call layer uses of a WebRTC leg."""

    on_state: StateCallback | None
    on_dtmf: DtmfCallback | None

    @property
    def state(self) -> LegState: ...

    @property
    def dtmf_supported(self) -> bool: ...

    async def answer(self, offer_sdp: str) -> str: ...

    async def create_offer(self, direction: str = "sendrecv") -> str: ...

    async def accept_answer(self, answer_sdp: str) -> None: ...

    async def renegotiate(self, offer_sdp: str) -> str: ...

    async def add_remote_candidate(self, candidate: Mapping[str, Any]) -> None: ...

    def local_candidates(self) -> list[dict[str, Any]]: ...

    async def read_frame(self) -> bytes: ...

    def forward_frames(self, sink: Callable[[bytes], None] | None) -> None: ...

    def write_frame(self, frame: bytes) -> None: ...

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None: ...

    def media_state(self) -> MediaStats: ...

    async def close(self) -> None: ...
