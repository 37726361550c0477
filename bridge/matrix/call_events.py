"""Parsing and building the legacy 1:1 VoIP events (m.call.*, version "1").

Every incoming call event is validated here into a typed object, or rejected with a
:class:`BadCallEvent` whose message says what is wrong; nothing else in the bridge reads raw
call event content. Outgoing contents are built here too, so call_id, party_id and version
are set the same way on every event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_SDP_BYTES = 64 * 1024
MAX_CANDIDATES = 200
CALL_EVENT_TYPES = (
    "m.call.invite",
    "m.call.candidates",
    "m.call.answer",
    "m.call.select_answer",
    "m.call.hangup",
    "m.call.reject",
    "m.call.negotiate",
)
HANGUP_REASONS = (
    "ice_failed",
    "ice_timeout",
    "invite_timeout",
    "user_hangup",
    "user_media_failed",
    "user_busy",
    "unknown_error",
)
_ID_RE = re.compile(r"[\x21-\x7e]{1,255}")


class BadCallEvent(ValueError):
    """A call event that cannot be used; the message names the field."""


@dataclass(frozen=True)
class CallBase:
    call_id: str
    party_id: str | None
    version: str


@dataclass(frozen=True)
class Invite(CallBase):
    sdp: str
    lifetime_ms: int
    has_video: bool
    invitee: str | None


@dataclass(frozen=True)
class Answer(CallBase):
    sdp: str


@dataclass(frozen=True)
class Candidates(CallBase):
    candidates: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class SelectAnswer(CallBase):
    selected_party_id: str


@dataclass(frozen=True)
class Hangup(CallBase):
    reason: str
    reject: bool  # m.call.reject


@dataclass(frozen=True)
class Negotiate(CallBase):
    sdp: str
    sdp_type: str  # "offer" or "answer"
    lifetime_ms: int


CallEvent = Invite | Answer | Candidates | SelectAnswer | Hangup | Negotiate


def _str(content: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = content.get(key)
    if value is None:
        if required:
            raise BadCallEvent(f"{key} is missing")
        return None
    if not isinstance(value, str):
        raise BadCallEvent(f"{key} must be a string, not {type(value).__name__}")
    return value


def _id(content: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = _str(content, key, required=required)
    if value is not None and not _ID_RE.fullmatch(value):
        raise BadCallEvent(f"{key} must be 1-255 printable ASCII characters")
    return value


def _version(content: dict[str, Any]) -> str:
    v = content.get("version")
    if v in (0, "0"):
        return "0"
    if v == "1" or v == 1:
        return "1"
    if isinstance(v, str) and v:
        return v  # a later version: treat as 1-compatible, as matrix-js-sdk does
    raise BadCallEvent(f"version must be \"1\" or 0, not {v!r}")


def _description(content: dict[str, Any], key: str, want_type: str | None) -> tuple[str, str]:
    desc = content.get(key)
    if not isinstance(desc, dict):
        raise BadCallEvent(f"{key} must be an object with type and sdp")
    sdp_type = desc.get("type")
    sdp = desc.get("sdp")
    if not isinstance(sdp_type, str) or (want_type and sdp_type != want_type):
        raise BadCallEvent(f"{key}.type must be {want_type or 'offer or answer'!r}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadCallEvent(f"{key}.sdp must be a non-empty string")
    if len(sdp.encode("utf-8", "surrogatepass")) > MAX_SDP_BYTES:
        raise BadCallEvent(f"{key}.sdp is over {MAX_SDP_BYTES // 1024} KiB")
    if "m=audio" not in sdp:
        raise BadCallEvent(f"{key}.sdp has no audio stream")
    return sdp_type, sdp


def _lifetime(content: dict[str, Any]) -> int:
    value = content.get("lifetime", 60000)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadCallEvent("lifetime must be a positive integer (milliseconds)")
    return min(value, 10 * 60 * 1000)


def parse(event_type: str, content: Any) -> CallEvent:
    """The typed form of one m.call.* event's content, or BadCallEvent."""
    if event_type not in CALL_EVENT_TYPES:
        raise BadCallEvent(f"{event_type} is not a call event")
    if not isinstance(content, dict):
        raise BadCallEvent("content must be an object")
    call_id = _id(content, "call_id")
    assert call_id is not None
    version = _version(content)
    party_id = _id(content, "party_id", required=version != "0")
    base: dict[str, Any] = {"call_id": call_id, "party_id": party_id, "version": version}
    if event_type == "m.call.invite":
        _, sdp = _description(content, "offer", "offer")
        invitee = _str(content, "invitee", required=False)
        return Invite(
            **base,
            sdp=sdp,
            lifetime_ms=_lifetime(content),
            has_video="m=video" in sdp,
            invitee=invitee,
        )
    if event_type == "m.call.answer":
        _, sdp = _description(content, "answer", "answer")
        return Answer(**base, sdp=sdp)
    if event_type == "m.call.candidates":
        raw = content.get("candidates")
        if not isinstance(raw, list):
            raise BadCallEvent("candidates must be a list")
        if len(raw) > MAX_CANDIDATES:
            raise BadCallEvent(f"more than {MAX_CANDIDATES} candidates in one event")
        clean: list[dict[str, Any]] = []
        for i, c in enumerate(raw):
            if not isinstance(c, dict) or not isinstance(c.get("candidate"), str):
                raise BadCallEvent(f"candidates[{i}] must be an object with a candidate string")
            if len(c["candidate"]) > 1024:
                raise BadCallEvent(f"candidates[{i}] is too long")
            clean.append(
                {
                    "candidate": c["candidate"],
                    "sdpMid": c.get("sdpMid") if isinstance(c.get("sdpMid"), str) else None,
                    "sdpMLineIndex": c.get("sdpMLineIndex")
                    if isinstance(c.get("sdpMLineIndex"), int)
                    and not isinstance(c.get("sdpMLineIndex"), bool)
                    else None,
                }
            )
        return Candidates(**base, candidates=tuple(clean))
    if event_type == "m.call.select_answer":
        selected = _id(content, "selected_party_id")
        assert selected is not None
        return SelectAnswer(**base, selected_party_id=selected)
    if event_type in ("m.call.hangup", "m.call.reject"):
        reason = content.get("reason", "user_hangup")
        if not isinstance(reason, str):
            raise BadCallEvent("reason must be a string")
        return Hangup(**base, reason=reason, reject=event_type == "m.call.reject")
    # m.call.negotiate
    sdp_type, sdp = _description(content, "description", None)
    if sdp_type not in ("offer", "answer"):
        raise BadCallEvent("description.type must be offer or answer")
    return Negotiate(**base, sdp=sdp, sdp_type=sdp_type, lifetime_ms=_lifetime(content))


# ---------------------------------------------------------------- outgoing contents


def _base(call_id: str, party_id: str) -> dict[str, Any]:
    return {"call_id": call_id, "party_id": party_id, "version": "1"}


def invite_content(call_id: str, party_id: str, sdp: str, lifetime_ms: int) -> dict[str, Any]:
    return {
        **_base(call_id, party_id),
        "lifetime": lifetime_ms,
        "offer": {"type": "offer", "sdp": sdp},
        "capabilities": {"m.call.transferee": False, "m.call.dtmf": True},
    }


def answer_content(call_id: str, party_id: str, sdp: str) -> dict[str, Any]:
    return {
        **_base(call_id, party_id),
        "answer": {"type": "answer", "sdp": sdp},
        "capabilities": {"m.call.transferee": False, "m.call.dtmf": True},
    }


def select_answer_content(call_id: str, party_id: str, selected: str) -> dict[str, Any]:
    return {**_base(call_id, party_id), "selected_party_id": selected}


def hangup_content(call_id: str, party_id: str, reason: str) -> dict[str, Any]:
    assert reason in HANGUP_REASONS, reason
    return {**_base(call_id, party_id), "reason": reason}


def reject_content(call_id: str, party_id: str) -> dict[str, Any]:
    return _base(call_id, party_id)


def candidates_content(
    call_id: str, party_id: str, candidates: list[dict[str, Any]]
) -> dict[str, Any]:
    return {**_base(call_id, party_id), "candidates": candidates}


def negotiate_content(
    call_id: str, party_id: str, sdp_type: str, sdp: str, lifetime_ms: int = 60000
) -> dict[str, Any]:
    return {
        **_base(call_id, party_id),
        "description": {"type": sdp_type, "sdp": sdp},
        "lifetime": lifetime_ms,
    }
