"""The bridge's WebRTC leg answering the Element-like test call client.

The Matrix side is an in-memory room (a mock of the transport, tests/harness/memory_room.py)
and the call signalling on the bridge side is a minimal responder written here (the real one
is the call manager); the media on both sides is real, on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from bridge.media import tone
from bridge.media.webrtc import WebRtcLeg
from tests.harness.call_client import CallClient, CallOptions, CallState
from tests.harness.memory_room import MemoryRoom, MemoryTransport


class Responder:
    """Answers one call with a WebRtcLeg; candidates, negotiate and hangup as the bridge does."""

    def __init__(self, transport: MemoryTransport, leg: WebRtcLeg) -> None:
        self.transport = transport
        self.leg = leg
        self.call_id: str | None = None
        self.hangups: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self.run())

    async def send(self, kind: str, content: dict[str, Any]) -> None:
        base = {"version": "1", "call_id": self.call_id, "party_id": "BRIDGE"}
        await self.transport.send(kind, {**content, **base})

    async def run(self) -> None:
        async for ev in self.transport.events():
            c = ev["content"]
            if ev["type"] == "m.call.invite":
                self.call_id = c["call_id"]
                answer = await self.leg.answer(c["offer"]["sdp"])
                await self.send("m.call.answer", {
                    "answer": {"type": "answer", "sdp": answer},
                    "capabilities": {"m.call.dtmf": self.leg.dtmf_supported},
                })
            elif ev["type"] == "m.call.candidates":
                for cand in c["candidates"]:
                    await self.leg.add_remote_candidate(cand)
            elif ev["type"] == "m.call.negotiate" and c["description"]["type"] == "offer":
                answer = await self.leg.renegotiate(c["description"]["sdp"])
                await self.send("m.call.negotiate", {"description": {"type": "answer", "sdp": answer}})
            elif ev["type"] == "m.call.hangup":
                self.hangups.append(c)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.leg.close()


@contextlib.asynccontextmanager
async def playing(leg: WebRtcLeg, freq: float) -> AsyncIterator[None]:
    async def run() -> None:
        start = time.monotonic()
        for n, frame in enumerate(tone.sine_frames(freq, leg.clock_rate)):
            leg.write_frame(frame)
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def capture(leg: WebRtcLeg, seconds: float) -> bytes:
    return b"".join([await leg.read_frame() for _ in range(round(seconds / 0.02))])


def check(pcm: bytes, rate: int, freq: float) -> None:
    report = tone.analyse(pcm, rate)
    assert abs(report.freq_hz - freq) <= 20 and abs(report.level_dbfs + 12) <= 3, report


async def test_element_like_video_call_answered_by_leg() -> None:
    room = MemoryRoom()
    leg = WebRtcLeg([], ["127.0.0.1"], ["PCMU", "PCMA", "G722", "opus"], 8000)
    digits: list[str] = []
    leg.on_dtmf = digits.append
    bridge = Responder(room.join("@sip_acme:test"), leg)
    client = CallClient(room.join("@alice:test"), CallOptions(video=True, end_of_candidates=False))
    try:
        client.play_tone(800)
        await client.place_call()
        await client.wait_for_state(CallState.CONNECTED)
        answer = room.of_type("m.call.answer")[0]["content"]
        assert "\r\nm=video 0 " in answer["answer"]["sdp"]
        assert answer["capabilities"]["m.call.dtmf"] is True
        async with playing(leg, 1000):
            await asyncio.sleep(0.4)
            heard_client, heard_leg = await asyncio.gather(client.record(1.0), capture(leg, 1.0))
            check(heard_client, 8000, 1000)
            check(heard_leg, 8000, 800)

            client.send_dtmf("42#")
            for _ in range(150):
                if len(digits) == 3:
                    break
                await asyncio.sleep(0.02)
            assert digits == list("42#")

            await client.hold()
            assert leg.direction == "recvonly"
            await client.resume()
            assert leg.direction == "sendrecv"
            await asyncio.sleep(0.4)
            check(await client.record(1.0), 8000, 1000)

        await client.hangup()
        for _ in range(50):
            if bridge.hangups:
                break
            await asyncio.sleep(0.02)
        assert bridge.hangups[0]["reason"] == "user_hangup"
    finally:
        await client.close()
        await bridge.close()
