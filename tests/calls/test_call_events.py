"""m.call.* parsing: valid events as Element sends them, and hostile ones rejected clearly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.calls import outcomes
from bridge.matrix import call_events as ce

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"


def invite(**over: Any) -> dict[str, Any]:
    c = {"call_id": "c1", "party_id": "p1", "version": "1", "lifetime": 60000,
         "offer": {"type": "offer", "sdp": SDP}}
    c.update(over)
    return c


def test_element_invite() -> None:
    msg = ce.parse("m.call.invite", invite())
    assert isinstance(msg, ce.Invite)
    assert (msg.call_id, msg.party_id, msg.version, msg.lifetime_ms) == ("c1", "p1", "1", 60000)
    assert not msg.has_video


def test_version_0_and_integer_1_accepted() -> None:
    assert ce.parse("m.call.invite", invite(version=0, party_id=None)).version == "0"
    assert ce.parse("m.call.invite", invite(version=1)).version == "1"


def test_video_invite_is_marked() -> None:
    msg = ce.parse("m.call.invite", invite(offer={"type": "offer", "sdp": SDP + "m=video 9 RTP/AVP 96\r\n"}))
    assert isinstance(msg, ce.Invite) and msg.has_video


@pytest.mark.parametrize("content,needle", [
    (invite(call_id=None), "call_id is missing"),
    (invite(call_id=5), "call_id must be a string"),
    (invite(party_id=None), "party_id is missing"),
    (invite(version="x" * 0), "version"),
    (invite(offer="nope"), "offer must be an object"),
    (invite(offer={"type": "answer", "sdp": SDP}), "offer.type"),
    (invite(offer={"type": "offer", "sdp": ""}), "offer.sdp"),
    (invite(offer={"type": "offer", "sdp": "v=0\r\nm=video 9 RTP/AVP 96\r\n"}), "no audio"),
    (invite(offer={"type": "offer", "sdp": SDP + "a=x:" + "y" * 70000 + "\r\n"}), "64 KiB"),
    (invite(lifetime=-1), "lifetime"),
    (invite(lifetime="60000"), "lifetime"),
    ([1, 2], "content must be an object"),
])
def test_bad_invites(content: Any, needle: str) -> None:
    with pytest.raises(ce.BadCallEvent, match=needle):
        ce.parse("m.call.invite", content)


def test_candidates_batched_with_end_of_candidates() -> None:
    msg = ce.parse("m.call.candidates", {
        "call_id": "c1", "party_id": "p1", "version": "1",
        "candidates": [{"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host",
                        "sdpMid": "0", "sdpMLineIndex": 0},
                       {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host",
                        "sdpMid": "0", "sdpMLineIndex": 0},
                       {"candidate": ""}]})
    assert isinstance(msg, ce.Candidates) and len(msg.candidates) == 3
    with pytest.raises(ce.BadCallEvent):
        ce.parse("m.call.candidates", {"call_id": "c", "party_id": "p", "version": "1",
                                       "candidates": [{"candidate": 3}]})


def test_outgoing_contents_follow_the_rules() -> None:
    for content in (ce.invite_content("c", "p", SDP, 60000), ce.answer_content("c", "p", SDP),
                    ce.hangup_content("c", "p", "user_busy"), ce.select_answer_content("c", "p", "q"),
                    ce.candidates_content("c", "p", []), ce.reject_content("c", "p"),
                    ce.negotiate_content("c", "p", "answer", SDP)):
        assert content["version"] == "1" and content["party_id"] == "p" and content["call_id"] == "c"
    assert ce.answer_content("c", "p", SDP)["capabilities"]["m.call.dtmf"] is True


def test_outcome_table() -> None:
    assert outcomes.for_sip_status(486).reason == "user_busy"
    assert outcomes.for_sip_status(600).reason == "user_busy"
    for s in (408, 480, 487):
        assert outcomes.for_sip_status(s).reason == "invite_timeout"
    for s in (404, 484, 604):
        o = outcomes.for_sip_status(s)
        assert o.reason == "unknown_error" and "does not exist" in o.notice
    assert outcomes.for_sip_status(403).code == "forbidden"
    assert outcomes.for_sip_status(407).code == "auth_failed"
    assert outcomes.for_sip_status(503).code == "unreachable"
    assert outcomes.for_sip_status(500).code == "pbx_error"
    assert outcomes.for_sip_status(0).code == "unreachable"
    assert outcomes.notice_for(outcomes.for_sip_status(404), "Acme 109", 404, "Not Found") == "Acme 109 does not exist."
    assert outcomes.sip_status_for_matrix_reject("user_busy") == 486
    assert outcomes.sip_status_for_matrix_reject("user_hangup") == 603


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(etype=st.sampled_from(ce.CALL_EVENT_TYPES), content=json_values)
def test_fuzz_any_json_is_parsed_or_rejected_clearly(etype: str, content: Any) -> None:
    try:
        ce.parse(etype, content)
    except ce.BadCallEvent as e:
        assert str(e)


@settings(max_examples=200, deadline=None)
@given(base=st.fixed_dictionaries({"call_id": st.text(min_size=1, max_size=20), "party_id": st.text(max_size=20),
                                   "version": st.sampled_from(["1", 1, 0, "0", "2", None])}),
       extra=st.dictionaries(st.sampled_from(["offer", "answer", "candidates", "selected_party_id",
                                              "reason", "description", "lifetime"]), json_values))
def test_fuzz_near_valid_events(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for etype in ce.CALL_EVENT_TYPES:
        try:
            ce.parse(etype, {**base, **extra})
        except ce.BadCallEvent:
            pass
