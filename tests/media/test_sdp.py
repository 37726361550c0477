"""SDP handling of the WebRTC leg, on text Chrome sends (tests/media/chrome_sdp.py)."""

from __future__ import annotations

import pytest

from bridge.media import sdp
from bridge.media.errors import SdpError
from tests.media.chrome_sdp import CHROME_OFFER


def test_chrome_offer_parses_and_audio_is_found() -> None:
    offer = sdp.parse(CHROME_OFFER, "offer")
    assert [m.kind for m in offer.media] == ["audio", "video"]
    index = sdp.find_audio(offer)
    audio = offer.media[index]
    assert audio.mid == "0"
    assert audio.telephone_events() == {110: 48000, 126: 8000}
    assert (0, "pcmu", 8000) in audio.codecs()
    assert audio.candidates()[0].startswith("candidate:3442447574 1 udp")


def test_audio_only_keeps_audio_and_trims_bundle() -> None:
    offer = sdp.parse(CHROME_OFFER)
    reduced = sdp.parse(sdp.audio_only(offer, 0))
    assert [m.kind for m in reduced.media] == ["audio"]
    assert "a=group:BUNDLE 0" in reduced.session
    assert "a=extmap-allow-mixed" in reduced.session


def test_full_answer_rejects_video_in_offer_order() -> None:
    offer = sdp.parse(CHROME_OFFER)
    audio_answer = "\r\n".join(
        [
            "v=0",
            "o=- 1 1 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            "m=audio 5000 UDP/TLS/RTP/SAVPF 0",
            "c=IN IP4 127.0.0.1",
            "a=mid:0",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:0123456789012345678901",
            "a=setup:active",
            "a=fingerprint:sha-256 AA:BB",
            "a=rtcp-mux",
            "a=rtpmap:0 PCMU/8000",
            "",
        ]
    )
    answer = sdp.full_answer(offer, 0, audio_answer)
    assert [(m.kind, m.port) for m in answer.media] == [("audio", 5000), ("video", 0)]
    video = answer.media[1]
    assert video.mid == "1" and video.direction == "inactive"
    assert video.fmt == ["96"] and video.attrs("rtpmap") == ["96 VP8/90000"]
    assert video.attr("ice-ufrag") == "abcd" and video.attr("setup") == "active"
    assert "a=group:BUNDLE 0" in answer.session


def test_telephone_events_added_to_m_line_and_rtpmap() -> None:
    section = sdp.MediaSection(
        ["m=audio 9 UDP/TLS/RTP/SAVPF 0", "a=rtpmap:0 PCMU/8000", "a=ssrc:1 cname:x"]
    )
    sdp.add_telephone_events(section, {126: 8000})
    assert section.lines == [
        "m=audio 9 UDP/TLS/RTP/SAVPF 0 126",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:126 telephone-event/8000",
        "a=fmtp:126 0-15",
        "a=ssrc:1 cname:x",
    ]
    assert section.telephone_events() == {126: 8000}


def test_free_payload_types_avoid_used_ones() -> None:
    section = sdp.MediaSection(["m=audio 9 UDP/TLS/RTP/SAVPF 96 101 0"])
    events = sdp.free_payload_types(section, [8000, 48000])
    assert events[110] == 48000
    assert 101 not in events and len(events) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "not a string"),
        ("", "does not start with v=0"),
        ("hello world", "does not start with v=0"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nthis is not sdp\r\n", "not a 'x=value' line"),
        ("v=0\r\nm=audio nine RTP/AVP 0\r\n", "malformed m-line"),
        ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF opus\r\n", "bad payload type"),
        ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=x\x00y\r\n", "not a 'x=value' line"),
    ],
)
def test_malformed_sdp_raises(text: object, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        sdp.parse(text, "offer")


def test_oversized_sdp_raises() -> None:
    big = CHROME_OFFER + "a=x-padding:" + "x" * (64 * 1024) + "\r\n"
    with pytest.raises(SdpError, match="over the 64 KiB limit"):
        sdp.parse(big, "offer")


def _without(lines: tuple[str, ...]) -> str:
    return "\r\n".join(x for x in CHROME_OFFER.split("\r\n") if not x.startswith(lines))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CHROME_OFFER.split("m=audio")[0], "no audio m-line"),
        (CHROME_OFFER.replace("m=audio 9 ", "m=audio 0 "), "only rejected"),
        (_without(("a=ice-ufrag",)), "ice-ufrag"),
        (_without(("a=fingerprint",)), "fingerprint"),
        (_without(("a=rtcp-mux",)), "rtcp-mux"),
        (_without(("a=mid",)), "a=mid"),
        (CHROME_OFFER.replace("UDP/TLS/RTP/SAVPF 111", "RTP/AVP 111"), "not DTLS-SRTP"),
    ],
)
def test_unusable_offer_raises(text: str, message: str) -> None:
    with pytest.raises(SdpError, match=message):
        sdp.find_audio(sdp.parse(text, "offer"), "offer")
