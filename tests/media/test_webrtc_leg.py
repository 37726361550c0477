"""The bridge's WebRTC leg against a second leg and against an independent, browser-like
aiortc peer (tests/harness/rtc_peer.py), all on 127.0.0.1. Audio is checked by content: a
tone's frequency (±20 Hz) and level; every candidate seen is asserted to be 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator

import pytest

from bridge.media import tone
from bridge.media.errors import NegotiationError, SdpError
from bridge.media.leg import LegState
from bridge.media.webrtc import WebRtcLeg
from tests.harness.rtc_peer import RtcPeer, candidate_hosts, strip_candidates
from tests.media.chrome_sdp import CHROME_OFFER

LOOPBACK = ["127.0.0.1"]


def assert_loopback(text: str) -> None:
    hosts = candidate_hosts(text)
    assert hosts, "no candidates in the SDP"
    assert set(hosts) == {"127.0.0.1"}, hosts
    for line in text.splitlines():
        if line.startswith("c=") and "0.0.0.0" not in line:
            assert line == "c=IN IP4 127.0.0.1", line


def new_leg(codecs: list[str] | None = None, rate: int = 8000, **kw: object) -> WebRtcLeg:
    return WebRtcLeg([], LOOPBACK, codecs or ["PCMU", "PCMA", "G722", "opus"], rate, **kw)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def playing(leg: WebRtcLeg, freq: float) -> AsyncIterator[None]:
    """Feed ``leg`` a tone in real time (as the SIP side's clock would)."""

    async def run() -> None:
        frames = tone.sine_frames(freq, leg.clock_rate)
        start = time.monotonic()
        for n, frame in enumerate(frames):
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
    """What ``leg`` receives from now on (frames queued before are dropped, as
    :func:`peer_capture` clears its recorder)."""
    while leg.read_frame_nowait() is not None:
        pass
    out = bytearray()
    for _ in range(round(seconds / 0.02)):
        out += await leg.read_frame()
    return bytes(out)


async def peer_capture(peer: RtcPeer, seconds: float) -> bytes:
    peer.recorder.clear()
    await asyncio.sleep(seconds)
    return peer.recorder.take()


def assert_tone(pcm: bytes, rate: int, freq: float) -> None:
    report = tone.analyse(pcm, rate)
    assert abs(report.freq_hz - freq) <= 20, report
    assert abs(report.level_dbfs - -12.0) <= 3, report


def assert_silent(pcm: bytes, rate: int) -> None:
    assert tone.level_dbfs(pcm) < -60, tone.analyse(pcm, rate)


async def wait_connected(*legs: WebRtcLeg, timeout: float = 10) -> None:
    async def one(leg: WebRtcLeg) -> None:
        while leg.state != LegState.CONNECTED:
            assert leg.state not in (LegState.FAILED, LegState.CLOSED), leg.state
            await asyncio.sleep(0.02)

    await asyncio.wait_for(asyncio.gather(*(one(x) for x in legs)), timeout)


@pytest.fixture
async def closing() -> AsyncIterator[list[WebRtcLeg | RtcPeer]]:
    items: list[WebRtcLeg | RtcPeer] = []
    yield items
    for item in items:
        await item.close()


async def connect_peer_to_leg(
    peer: RtcPeer, leg: WebRtcLeg, *, end_of_candidates: bool = True
) -> str:
    """Peer offers (candidates trickled like Element, duplicated), the leg answers."""
    offer = await peer.create_offer()
    assert_loopback(offer)
    answer = await leg.answer(strip_candidates(offer))
    assert_loopback(answer)
    candidates = peer.local_candidates()
    for c in candidates[:1] + candidates + candidates:
        await leg.add_remote_candidate(c)
    if end_of_candidates:
        await leg.add_remote_candidate({"candidate": ""})
    await peer.accept_answer(answer)
    await asyncio.wait_for(peer.connected.wait(), 10)
    await wait_connected(leg)
    return answer


async def test_two_legs_tone_both_ways_at_two_clock_rates(
    closing: list[WebRtcLeg | RtcPeer],
) -> None:
    a, b = new_leg(["PCMU"], 8000, label="a"), new_leg(["opus", "PCMU"], 16000, label="b")
    closing += [a, b]
    offer = await a.create_offer()
    assert_loopback(offer)
    assert re.search(r"^m=audio \d+ UDP/TLS/RTP/SAVPF 0 101\r?$", offer, re.M), offer
    assert "a=rtpmap:101 telephone-event/8000" in offer
    answer = await b.answer(offer)
    assert_loopback(answer)
    await a.accept_answer(answer)
    await wait_connected(a, b)
    for leg in (a, b):
        assert {c["candidate"].split()[4] for c in leg.local_candidates()} == {"127.0.0.1"}
        for t in leg._pc.getTransceivers():  # no STUN/TURN server, aiortc's default included
            connection = t.receiver.transport.transport.iceGatherer._connection
            assert connection.stun_server is None and connection.turn_server is None
    async with playing(a, 1000), playing(b, 800):
        await asyncio.sleep(0.4)
        heard_a, heard_b = await asyncio.gather(capture(a, 1.0), capture(b, 1.0))
    assert_tone(heard_b, 16000, 1000)
    assert_tone(heard_a, 8000, 800)
    stats = a.media_state()
    assert stats.codec == "pcmu" and stats.rtp_sent > 0 and stats.rtp_received > 0
    states: list[LegState] = []
    b.on_state = states.append
    await a.close()  # the peer's DTLS close ends the other leg too
    for _ in range(100):
        if b.state == LegState.CLOSED:
            break
        await asyncio.sleep(0.02)
    assert states == [LegState.CLOSED]
    await a.close()


async def test_pcmu_chosen_from_chrome_like_offer_with_opus_first(
    closing: list[WebRtcLeg | RtcPeer],
) -> None:
    peer, leg = RtcPeer(), new_leg(["PCMU", "opus"])
    closing += [leg, peer]
    offer = await peer.create_offer()
    first = re.search(r"^m=audio \d+ \S+ (\d+)", offer, re.M)
    assert first and first.group(1) == "96"  # opus offered first
    answer = await connect_peer_to_leg(peer, leg)
    m = re.search(r"^m=audio \d+ \S+ ([\d ]+)\r?$", answer, re.M)
    assert m and m.group(1).split()[0] == "0", answer
    assert "a=rtpmap:126 telephone-event/8000" in answer
    assert leg.media_state().codec == "pcmu"
    peer.tone.freq = 800
    async with playing(leg, 1000):
        await asyncio.sleep(0.4)
        heard_leg, heard_peer = await asyncio.gather(capture(leg, 1.0), peer_capture(peer, 1.0))
    assert_tone(heard_leg, 8000, 800)
    assert_tone(heard_peer, 8000, 1000)


async def test_video_m_line_rejected_and_call_works_as_audio(
    closing: list[WebRtcLeg | RtcPeer],
) -> None:
    peer, leg = RtcPeer(video=True), new_leg()
    closing += [leg, peer]
    answer = await connect_peer_to_leg(peer, leg)
    kinds = re.findall(r"^m=(\w+) (\d+)", answer, re.M)
    assert kinds[0][0] == "audio" and kinds[0][1] != "0"
    assert kinds[1] == ("video", "0")
    assert re.search(r"^a=group:BUNDLE 0\r?$", answer, re.M), answer
    peer.tone.freq = 1000
    await asyncio.sleep(0.4)
    assert_tone(await capture(leg, 1.0), 8000, 1000)


async def test_chrome_offer_text_is_answered(closing: list[WebRtcLeg | RtcPeer]) -> None:
    leg = new_leg(["PCMU", "opus"])
    closing.append(leg)
    answer = await leg.answer(CHROME_OFFER)
    assert_loopback(answer)
    audio, video = answer.split("m=video")
    assert re.search(r"^m=audio \d+ UDP/TLS/RTP/SAVPF 0 111 126\r?$", audio, re.M), audio
    assert "a=rtpmap:126 telephone-event/8000" in audio
    assert "a=setup:active" in audio and "a=mid:0" in audio
    assert video.startswith(" 0 UDP/TLS/RTP/SAVPF 96") and "a=mid:1" in video
    assert leg.dtmf_supported


async def test_dtmf_both_ways(closing: list[WebRtcLeg | RtcPeer]) -> None:
    peer, leg = RtcPeer(), new_leg()
    closing += [leg, peer]
    digits: list[str] = []
    leg.on_dtmf = digits.append
    await connect_peer_to_leg(peer, leg)
    assert leg.dtmf_supported
    async with playing(leg, 1000):
        peer.send_dtmf("159#")
        leg.send_dtmf("*0", duration_ms=120)
        for _ in range(200):
            if len(digits) >= 4 and len(peer.received_dtmf) >= 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
    assert digits == list("159#")
    assert peer.received_dtmf == list("*0")
    assert leg.media_state().dtmf_received == 4


async def test_opus_tone_level_and_48k_telephone_event(closing: list[WebRtcLeg | RtcPeer]) -> None:
    peer, leg = RtcPeer(), new_leg(["opus"], 16000)
    closing += [leg, peer]
    digits: list[str] = []
    leg.on_dtmf = digits.append
    answer = await connect_peer_to_leg(peer, leg)
    assert "a=rtpmap:110 telephone-event/48000" in answer
    assert leg.media_state().codec == "opus"
    peer.tone.freq = 800
    async with playing(leg, 1000):
        await asyncio.sleep(0.4)
        heard_leg, heard_peer = await asyncio.gather(capture(leg, 1.0), peer_capture(peer, 1.0))
        peer.send_dtmf("4")
        leg.send_dtmf("8")
        for _ in range(100):
            if digits and peer.received_dtmf:
                break
            await asyncio.sleep(0.02)
    assert_tone(heard_leg, 16000, 800)
    assert_tone(heard_peer, 8000, 1000)  # level kept: no -3 dB mono-to-stereo upmix
    assert digits == ["4"] and peer.received_dtmf == ["8"]


async def test_connects_without_end_of_candidates(closing: list[WebRtcLeg | RtcPeer]) -> None:
    peer, leg = RtcPeer(), new_leg()
    closing += [leg, peer]
    await connect_peer_to_leg(peer, leg, end_of_candidates=False)
    assert leg.state == LegState.CONNECTED


async def test_no_connectivity_reports_failed_after_ice_timeout(
    closing: list[WebRtcLeg | RtcPeer],
) -> None:
    peer, leg = RtcPeer(), new_leg(ice_timeout=1.0)
    closing += [leg, peer]
    states: list[LegState] = []
    leg.on_state = states.append
    await leg.answer(strip_candidates(await peer.create_offer()))  # the answer never arrives
    for _ in range(150):
        if LegState.FAILED in states:
            break
        await asyncio.sleep(0.02)
    assert states[-1] == LegState.FAILED


async def test_hold_by_peer_via_renegotiation_and_resume(
    closing: list[WebRtcLeg | RtcPeer],
) -> None:
    peer, leg = RtcPeer(), new_leg()
    closing += [leg, peer]
    await connect_peer_to_leg(peer, leg)
    peer.tone.freq = 800
    async with playing(leg, 1000):
        hold = await peer.create_offer(direction="sendonly")
        answer = await leg.renegotiate(hold)
        assert_loopback(answer)
        assert re.search(r"^a=recvonly\r?$", answer, re.M), answer
        await peer.accept_answer(answer)
        assert leg.direction == "recvonly"
        await asyncio.sleep(0.3)
        heard_leg, heard_peer = await asyncio.gather(capture(leg, 1.0), peer_capture(peer, 1.0))
        assert_tone(heard_leg, 8000, 800)  # the holder keeps sending (music on hold)
        assert_silent(heard_peer, 8000)  # the held side sends nothing

        resume = await peer.create_offer(direction="sendrecv")
        answer = await leg.renegotiate(resume)
        assert re.search(r"^a=sendrecv\r?$", answer, re.M), answer
        await peer.accept_answer(answer)
        assert leg.direction == "sendrecv"
        await asyncio.sleep(0.4)
        heard_leg, heard_peer = await asyncio.gather(capture(leg, 1.0), peer_capture(peer, 1.0))
    assert_tone(heard_leg, 8000, 800)
    assert_tone(heard_peer, 8000, 1000)


async def test_hold_by_leg_offer_and_resume(closing: list[WebRtcLeg | RtcPeer]) -> None:
    a, b = new_leg(label="a"), new_leg(label="b")
    closing += [a, b]
    await a.accept_answer(await b.answer(await a.create_offer()))
    await wait_connected(a, b)
    async with playing(a, 1000), playing(b, 800):
        hold = await a.create_offer("sendonly")
        assert re.search(r"^a=sendonly\r?$", hold, re.M)
        await a.accept_answer(await b.renegotiate(hold))
        assert (a.direction, b.direction) == ("sendonly", "recvonly")
        await asyncio.sleep(0.3)
        heard_a, heard_b = await asyncio.gather(capture(a, 1.0), capture(b, 1.0))
        assert_tone(heard_b, 8000, 1000)
        assert_silent(heard_a, 8000)
        await a.accept_answer(await b.renegotiate(await a.create_offer("sendrecv")))
        assert (a.direction, b.direction) == ("sendrecv", "sendrecv")
        await asyncio.sleep(0.4)
        heard_a, heard_b = await asyncio.gather(capture(a, 1.0), capture(b, 1.0))
    assert_tone(heard_a, 8000, 800)
    assert_tone(heard_b, 8000, 1000)


async def test_leg_offer_answered_by_browser_like_peer(closing: list[WebRtcLeg | RtcPeer]) -> None:
    leg, peer = new_leg(["PCMU", "opus"]), RtcPeer()
    closing += [leg, peer]
    digits: list[str] = []
    leg.on_dtmf = digits.append
    offer = await leg.create_offer()
    assert_loopback(offer)
    assert "a=rtpmap:101 telephone-event/8000" in offer
    assert "a=rtpmap:110 telephone-event/48000" in offer
    answer = await peer.answer(offer)
    await leg.accept_answer(answer)
    await wait_connected(leg)
    assert leg.media_state().codec == "pcmu" and leg.dtmf_supported
    peer.tone.freq = 800
    async with playing(leg, 1000):
        await asyncio.sleep(0.4)
        heard_leg, heard_peer = await asyncio.gather(capture(leg, 1.0), peer_capture(peer, 1.0))
        peer.send_dtmf("2")
        leg.send_dtmf("3")
        for _ in range(100):
            if digits and peer.received_dtmf:
                break
            await asyncio.sleep(0.02)
    assert_tone(heard_leg, 8000, 800)
    assert_tone(heard_peer, 8000, 1000)
    assert digits == ["2"] and peer.received_dtmf == ["3"]


async def test_bad_input_raises_typed_errors_and_changes_nothing(
    closing: list[WebRtcLeg | RtcPeer],
) -> None:
    leg, peer = new_leg(["PCMU"]), RtcPeer()
    closing += [leg, peer]
    with pytest.raises(SdpError, match="does not start with v=0"):
        await leg.answer("this is not an SDP")
    with pytest.raises(SdpError, match="no audio m-line"):
        await leg.answer(CHROME_OFFER.split("m=audio")[0])
    with pytest.raises(SdpError, match="64 KiB"):
        await leg.answer(CHROME_OFFER + "a=x:" + "y" * 70000 + "\r\n")
    with pytest.raises(NegotiationError, match="no common audio codec"):
        await leg.answer(CHROME_OFFER.replace(" 111 63 9 0 8 13 110 126", " 111 63 13 110 126"))
    with pytest.raises(SdpError, match="malformed ICE candidate"):
        await leg.add_remote_candidate({"candidate": "candidate:garbage", "sdpMid": "0"})
    assert leg.state == LegState.NEW
    await connect_peer_to_leg(peer, leg)  # the leg is still usable
    restart = (await peer.create_offer()).replace("a=ice-ufrag:", "a=ice-ufrag:x")
    with pytest.raises(NegotiationError, match="ICE restart"):
        await leg.renegotiate(restart)
