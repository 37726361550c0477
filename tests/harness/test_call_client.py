"""Unit tests of the test call client (tests/harness/call_client.py): two or three clients
call each other through an in-memory room.

The Matrix transport is a mock here (tests/harness/memory_room.py: no homeserver, events go
from one client to the others in order); the WebRTC media is real (aiortc on 127.0.0.1), so
audio is checked by its content and DTMF by the digits received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from bridge.media import tone
from tests.harness.call_client import SDP_STREAM_METADATA, CallClient, CallOptions, CallState
from tests.harness.memory_room import MemoryRoom
from tests.harness.rtc_peer import RtcPeer, candidate_hosts

Factory = Callable[..., CallClient]


@pytest.fixture
async def room() -> MemoryRoom:
    return MemoryRoom()


@pytest.fixture
async def client(room: MemoryRoom) -> AsyncIterator[Factory]:
    made: list[CallClient] = []

    def make(name: str, options: CallOptions | None = None) -> CallClient:
        c = CallClient(room.join(f"@{name}:test"), options, name=name)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


def assert_tone(pcm: bytes, rate: int, freq: float) -> None:
    report = tone.analyse(pcm, rate)
    assert abs(report.freq_hz - freq) <= 20, report
    assert abs(report.level_dbfs + 12) <= 3, report


def assert_loopback_candidates(room: MemoryRoom) -> list[str]:
    seen = []
    for ev in room.of_type("m.call.candidates"):
        for c in ev["content"]["candidates"]:
            if c["candidate"]:
                assert c["candidate"].split()[4] == "127.0.0.1", c
                assert c["sdpMid"] is not None and isinstance(c["sdpMLineIndex"], int)
            seen.append(c["candidate"])
    for ev in room.of_type("m.call.invite") + room.of_type("m.call.answer"):
        body = ev["content"].get("offer") or ev["content"].get("answer")
        assert set(candidate_hosts(body["sdp"])) <= {"127.0.0.1"}
    return seen


async def connect(a: CallClient, b: CallClient, **kw: bool) -> None:
    await a.place_call(**kw)
    await b.wait_for_invite()
    await b.answer()
    await asyncio.gather(a.wait_for_state(CallState.CONNECTED), b.wait_for_state(CallState.CONNECTED))


async def test_call_with_tone_both_ways_and_hangup(room: MemoryRoom, client: Factory) -> None:
    a, b = client("alice"), client("bob")
    a.play_tone(1000)
    b.play_tone(800)
    await connect(a, b)

    invite = room.of_type("m.call.invite")[0]["content"]
    assert invite["version"] == "1" and invite["lifetime"] == 60000
    assert invite["offer"]["type"] == "offer" and "invitee" not in invite
    assert invite["party_id"] == a.party_id and invite["call_id"] == a.call_id == b.call_id
    assert invite["capabilities"] == {"m.call.transferee": False, "m.call.dtmf": False}
    assert next(iter(invite[SDP_STREAM_METADATA].values()))["purpose"] == "m.usermedia"
    assert "a=candidate" not in invite["offer"]["sdp"]  # trickled instead
    answer = room.of_type("m.call.answer")[0]["content"]
    assert answer["party_id"] == b.party_id and answer["answer"]["type"] == "answer"
    assert "capabilities" in answer
    select = room.of_type("m.call.select_answer")[0]["content"]
    assert select["selected_party_id"] == b.party_id and select["party_id"] == a.party_id

    await asyncio.gather(a.wait_candidates_sent(), b.wait_candidates_sent())
    candidates = assert_loopback_candidates(room)
    real = [c for c in candidates if c]
    assert len(real) > len(set(real)), "candidates are sent with duplicates"
    assert candidates.count("") == 2  # end-of-candidates from each side

    await asyncio.sleep(0.4)
    heard_a, heard_b = await asyncio.gather(a.record(1.0), b.record(1.0))
    assert_tone(heard_a, 8000, 800)
    assert_tone(heard_b, 8000, 1000)

    await a.hangup("user_hangup")
    await b.wait_for_state(CallState.ENDED)
    assert (b.hangup_reason, b.ended_by) == ("user_hangup", "remote")
    assert (a.hangup_reason, a.ended_by) == ("user_hangup", "local")
    assert room.of_type("m.call.hangup")[0]["content"]["reason"] == "user_hangup"


async def test_dtmf_both_ways(client: Factory) -> None:
    a, b = client("alice"), client("bob")
    await connect(a, b)
    a.send_dtmf("123#")
    b.send_dtmf("*9")
    assert await b.wait_for_dtmf(4) == list("123#")
    assert await a.wait_for_dtmf(2) == list("*9")


async def test_hold_and_resume_via_negotiate(room: MemoryRoom, client: Factory) -> None:
    a, b = client("alice"), client("bob")
    a.play_tone(1000)
    b.play_tone(800)
    await connect(a, b)
    await a.hold()
    offer = room.of_type("m.call.negotiate")[0]["content"]
    assert offer["description"]["type"] == "offer" and offer["lifetime"] == 60000
    assert "a=sendonly" in offer["description"]["sdp"]
    reply = room.of_type("m.call.negotiate")[1]["content"]
    assert reply["description"]["type"] == "answer" and "a=recvonly" in reply["description"]["sdp"]
    assert a.remote_on_hold and b.local_on_hold
    await asyncio.sleep(0.3)
    heard_a, heard_b = await asyncio.gather(a.record(1.0), b.record(1.0))
    assert_tone(heard_b, 8000, 1000)
    assert tone.level_dbfs(heard_a) < -60  # the held side sends nothing

    await a.resume()
    assert not a.remote_on_hold and not b.local_on_hold
    await asyncio.sleep(0.4)
    heard_a, heard_b = await asyncio.gather(a.record(1.0), b.record(1.0))
    assert_tone(heard_a, 8000, 800)
    assert_tone(heard_b, 8000, 1000)


async def test_reject(room: MemoryRoom, client: Factory) -> None:
    a, b = client("alice"), client("bob")
    await a.place_call()
    await b.wait_for_invite()
    await b.reject()
    await a.wait_for_state(CallState.ENDED)
    assert a.rejected and a.ended_by == "remote"
    assert room.of_type("m.call.reject")[0]["content"]["party_id"] == b.party_id


async def test_connects_without_end_of_candidates_and_duplicates(
    room: MemoryRoom, client: Factory
) -> None:
    opts = CallOptions(end_of_candidates=False, duplicate_candidates=False, candidate_batches=3)
    a, b = client("alice", opts), client("bob", opts)
    await connect(a, b)
    await asyncio.gather(a.wait_candidates_sent(), b.wait_candidates_sent())
    candidates = assert_loopback_candidates(room)
    assert "" not in candidates
    assert len(candidates) == len(set(candidates))


async def test_candidates_in_sdp_option(room: MemoryRoom, client: Factory) -> None:
    opts = CallOptions(candidates_in_sdp=True)
    a, b = client("alice", opts), client("bob", opts)
    await connect(a, b)
    assert "a=candidate:" in room.of_type("m.call.invite")[0]["content"]["offer"]["sdp"]
    assert not room.of_type("m.call.candidates")


async def test_video_call_offers_audio_and_video(room: MemoryRoom, client: Factory) -> None:
    a, b = client("alice", CallOptions(video=True)), client("bob")
    a.play_tone(1000)
    await connect(a, b)
    sdp = room.of_type("m.call.invite")[0]["content"]["offer"]["sdp"]
    assert "m=audio" in sdp and "m=video" in sdp
    meta = next(iter(room.of_type("m.call.invite")[0]["content"][SDP_STREAM_METADATA].values()))
    assert meta["video_muted"] is False
    await asyncio.sleep(0.4)
    assert_tone(await b.record(1.0), 8000, 1000)


async def test_other_device_stops_ringing_when_answered_elsewhere(room: MemoryRoom, client: Factory) -> None:
    a, b, b2 = client("alice"), client("bob"), client("bob-phone")
    await a.place_call()
    await asyncio.gather(b.wait_for_invite(), b2.wait_for_invite())
    await b.answer()
    await a.wait_for_state(CallState.CONNECTING, CallState.CONNECTED)
    await b2.wait_for_state(CallState.ENDED)  # stops ringing on the select_answer
    assert (b2.hangup_reason, b2.ended_by) == ("answered_elsewhere", "remote")
    await b.wait_for_state(CallState.CONNECTED)
    assert a.opponent_party_id == b.party_id
    assert len(room.of_type("m.call.select_answer")) == 1


async def test_version_0_invite_is_accepted(room: MemoryRoom, client: Factory) -> None:
    b = client("bob", CallOptions(candidates_in_sdp=True))
    legacy = room.join("@legacy:test")
    peer = RtcPeer()
    try:
        offer = await peer.create_offer()  # candidates inside the SDP, as v0 clients did
        await legacy.send("m.call.invite", {
            "version": 0, "call_id": "legacy1", "lifetime": 60000,
            "offer": {"type": "offer", "sdp": offer},
        })
        await b.wait_for_invite()
        assert b.opponent_version == 0 and b.opponent_party_id is None
        await b.answer()
        sent = b.sent_of("m.call.answer")[0]
        assert sent["version"] == "1" and "a=candidate:" in sent["answer"]["sdp"]
        await peer.accept_answer(sent["answer"]["sdp"])
        await b.wait_for_state(CallState.CONNECTED)
        await legacy.send("m.call.hangup", {"version": 0, "call_id": "legacy1"})
        await b.wait_for_state(CallState.ENDED)
        assert b.hangup_reason == "user_hangup" and b.ended_by == "remote"
    finally:
        await peer.close()


async def test_invite_timeout(room: MemoryRoom, client: Factory) -> None:
    a = client("alice", CallOptions(lifetime_ms=300))
    await a.place_call()
    await a.wait_for_state(CallState.ENDED, timeout=5)
    assert a.hangup_reason == "invite_timeout"
    assert room.of_type("m.call.hangup")[0]["content"]["reason"] == "invite_timeout"
