"""What the call manager needs from a SIP call in a worker (implemented by the pool's
CallHandle): SIP control, and the WebRTC leg that lives in the same worker, whose audio the
worker pumps to and from the SIP call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class BridgedCall(Protocol):
    id: str
    company: str
    sip_call_id: str
    correlation: str

    @property
    def worker(self) -> int: ...

    def events(self) -> AsyncIterator[Any]: ...

    async def hangup(self) -> None: ...

    async def ringing(self) -> None: ...

    async def answer(self) -> None: ...

    async def reject(self, status: int = 486, reason: str = "") -> None: ...

    async def send_dtmf(self, digits: str, method: Any = "auto") -> str: ...

    # The WebRTC leg (Matrix side) of this call, in the same worker.
    async def webrtc_answer(self, offer_sdp: str, ice_servers: list[dict[str, Any]]) -> str: ...

    async def webrtc_offer(self, ice_servers: list[dict[str, Any]]) -> str: ...

    async def webrtc_accept(self, answer_sdp: str) -> None: ...

    async def webrtc_candidates(self, candidates: list[dict[str, Any]]) -> None: ...

    async def webrtc_renegotiate(self, offer_sdp: str) -> str: ...
