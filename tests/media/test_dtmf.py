"""RFC 4733 payloads and RTP header handling of bridge.media.dtmf (no network)."""

from __future__ import annotations

import pytest

from bridge.media import dtmf
from bridge.media.errors import DtmfError


def test_event_payload_round_trip() -> None:
    payload = dtmf.encode_event(11, True, 10, 800)
    assert payload == bytes([11, 0x80 | 10, 0x03, 0x20])
    assert dtmf.decode_event(payload) == (11, True, 10, 800)


def test_digits_map_to_events() -> None:
    assert [dtmf.event_of(d) for d in "0 9 * # A d".split()] == [0, 9, 10, 11, 12, 15]
    with pytest.raises(DtmfError, match="not a DTMF digit"):
        dtmf.event_of("x")


def test_header_length_with_csrc_and_extension() -> None:
    plain = bytes([0x80, 0, 0, 1]) + bytes(8) + b"payload"
    assert dtmf.header_length(plain) == 12
    assert dtmf.rtp_payload(plain) == b"payload"
    ext = bytes([0x91, 0, 0, 1]) + bytes(8) + bytes(4) + bytes([0xBE, 0xDE, 0, 1]) + bytes(4) + b"p"
    assert dtmf.header_length(ext) == 12 + 4 + 4 + 4
    assert dtmf.rtp_payload(ext) == b"p"
    padded = bytes([0xA0, 0, 0, 1]) + bytes(8) + b"ab" + bytes([0, 2])
    assert dtmf.rtp_payload(padded) == b"ab"
    assert dtmf.header_length(b"\x00" * 12) is None


def test_queue_rejects_bad_input() -> None:
    d = dtmf.RtpDtmf(lambda _digit: None)
    with pytest.raises(DtmfError, match="duration"):
        d.queue("1", duration_ms=10)
    with pytest.raises(DtmfError, match="no DTMF digits"):
        d.queue("")
    with pytest.raises(DtmfError, match="not a DTMF digit"):
        d.queue("12x")
