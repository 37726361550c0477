"""G.711 is encoded by the WebRTC leg's track itself and handed to aiortc as packets, and
decoded in the loop instead of aiortc's decoder thread: the same bytes and samples as
aiortc's own encoder and decoder, and a tone still arrives as that tone both ways."""

from __future__ import annotations

import asyncio
import fractions
import queue

import av
import numpy as np
import pytest
from aiortc.codecs.g711 import PcmaDecoder, PcmaEncoder, PcmuDecoder, PcmuEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from bridge.media import fast_receive
from bridge.media.tracks import OutgoingTrack, g711_decode_table, g711_table
from bridge.media.webrtc import WebRtcLeg
from tests.media.test_webrtc_leg import (
    assert_tone,
    capture,
    closing,  # noqa: F401 - fixture
    new_leg,
    playing,
    wait_connected,
)


@pytest.mark.parametrize(("name", "encoder"), [("pcmu", PcmuEncoder), ("pcma", PcmaEncoder)])
async def test_packets_hold_what_aiortcs_encoder_makes(name: str, encoder: type) -> None:
    rng = np.random.default_rng(7)
    track = OutgoingTrack(8000)
    track.encoding = name
    assert track.encoding == name
    enc = encoder()
    for _ in range(20):
        pcm = rng.normal(0, 9000, 160).clip(-32768, 32767).astype("<i2")
        track.push(pcm.tobytes())
        packet = await track.recv()
        assert isinstance(packet, av.Packet)
        frame = av.AudioFrame(format="s16", layout="mono", samples=160)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = 8000
        frame.pts = 0
        frame.time_base = fractions.Fraction(1, 8000)
        payloads, _ = enc.encode(frame)
        assert bytes(packet) == payloads[0]
        assert g711_table(name)[pcm.view("<u2")].tobytes() == payloads[0]
    assert packet.pts == 19 * 160 and packet.time_base == fractions.Fraction(1, 8000)


@pytest.mark.parametrize(("name", "decoder"), [("pcmu", PcmuDecoder), ("pcma", PcmaDecoder)])
def test_decode_table_gives_what_aiortcs_decoder_gives(name: str, decoder: type) -> None:
    payload = bytes(range(256))
    frames = decoder().decode(JitterFrame(data=payload, timestamp=0))
    theirs = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype("<i2")
    assert g711_decode_table(name)[np.frombuffer(payload, np.uint8)].tobytes() == theirs.tobytes()


def test_stand_in_queue_decodes_g711_and_passes_the_rest_on() -> None:
    got: list[bytes] = []

    class Receiver:
        pass

    receiver = Receiver()
    inner: queue.Queue[object] = queue.Queue()
    setattr(receiver, fast_receive._ATTR, inner)  # what aiortc's RTCRtpReceiver holds
    shim = fast_receive.install(receiver, got.append)
    assert shim is not None and fast_receive.install(receiver, got.append) is shim
    pcmu = RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, payloadType=0)
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2,
                                 payloadType=111)
    shim.put((pcmu, JitterFrame(data=bytes([0xFF, 0x00]), timestamp=0)))
    shim.put((opus, JitterFrame(data=b"opus", timestamp=0)))
    shim.put(None)
    assert got == [g711_decode_table("pcmu")[[0xFF, 0x00]].tobytes()]
    assert inner.get_nowait()[0] is opus and inner.get_nowait() is None
    assert fast_receive.install(object(), got.append) is None  # nothing to stand in for


def test_only_g711_at_8_khz_is_encoded_by_the_track() -> None:
    wide = OutgoingTrack(16000)
    wide.encoding = "pcmu"
    assert wide.encoding is None
    opus = OutgoingTrack(8000)
    opus.encoding = "opus"
    assert opus.encoding is None


@pytest.mark.parametrize("direct", [True, False], ids=["g711_rtp", "aiortc"])
async def test_pcma_tone_both_ways(closing: list[WebRtcLeg], direct: bool) -> None:  # noqa: F811
    a = new_leg(["PCMA"], 8000, label="a", direct_g711=direct)
    b = new_leg(["PCMA"], 8000, label="b", direct_g711=direct)
    closing += [a, b]
    await a.accept_answer(await b.answer(await a.create_offer()))
    await wait_connected(a, b)
    assert a._out.encoding == "pcma" and b._out.encoding == "pcma"
    async with playing(a, 1000), playing(b, 800):
        await asyncio.sleep(0.4)
        heard_a, heard_b = await asyncio.gather(capture(a, 1.0), capture(b, 1.0))
    assert_tone(heard_b, 8000, 1000)
    assert_tone(heard_a, 8000, 800)
    assert a.media_state().codec == "pcma"
    for leg in (a, b):
        assert leg._transceiver is not None
        shim = getattr(leg._transceiver.receiver, fast_receive._ATTR)
        assert isinstance(shim, fast_receive.InlineG711Queue)
        if direct:  # packets went past aiortc's sender and receiver both ways
            assert leg._g711 is not None and leg._g711.payload_type == 8
            assert leg._g711.sent >= 50 and leg._g711.received >= 50 and shim.decoded == 0
            # and were taken off the ICE connection where they arrived (srtp_receive.py)
            assert leg._srtp_in is not None and leg._srtp_in.taken >= 50
        else:  # what arrived was decoded in the loop, not in aiortc's thread
            assert leg._g711 is None and shim.decoded >= 50
    # the RTCP sender reports that reach the other side count what was sent
    assert b._transceiver is not None
    for _ in range(60):
        stats = await b._transceiver.receiver.getStats()
        sent = [s.packetsSent for s in stats.values() if s.type == "remote-outbound-rtp"]
        if sent and sent[0] >= 25:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no sender report with counts reached b: {sent}")
