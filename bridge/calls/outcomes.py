"""SIP ⇄ Matrix outcome mapping, in one table (DESIGN §5)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """How a SIP ending reaches the Matrix user."""

    code: str  # short outcome name for call records and metrics
    reason: str  # m.call.hangup reason
    notice: str  # the notice in the DM; {name} = who was called, {status}/{text} = SIP


_BY_STATUS: dict[int, Outcome] = {
    486: Outcome("busy", "user_busy", "{name} is busy."),
    600: Outcome("busy", "user_busy", "{name} is busy."),
    603: Outcome("declined", "user_busy", "{name} declined the call."),
    408: Outcome("no_answer", "invite_timeout", "{name} did not answer."),
    480: Outcome("no_answer", "invite_timeout", "{name} did not answer."),
    487: Outcome("no_answer", "invite_timeout", "{name} did not answer."),
    404: Outcome("not_found", "unknown_error", "{name} does not exist."),
    484: Outcome("not_found", "unknown_error", "{name} does not exist."),
    604: Outcome("not_found", "unknown_error", "{name} does not exist."),
    403: Outcome(
        "forbidden", "unknown_error", "The phone system refused the call ({status} {text})."
    ),
    401: Outcome("auth_failed", "unknown_error",
                 "The bridge could not sign in to the phone system ({status} {text})."),
    407: Outcome("auth_failed", "unknown_error",
                 "The bridge could not sign in to the phone system ({status} {text})."),
}

UNREACHABLE = Outcome("unreachable", "unknown_error", "The phone system could not be reached.")
SERVER_ERROR = Outcome("pbx_error", "unknown_error", "The phone system failed ({status} {text}).")
OTHER = Outcome("failed", "unknown_error", "The call failed ({status} {text}).")
HANGUP = Outcome("completed", "user_hangup", "")
LOST = Outcome("lost", "unknown_error", "The call was lost because of an internal error.")


def for_sip_status(status: int) -> Outcome:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status in (0, 502, 503, 504) or status >= 700:
        return UNREACHABLE if status in (0, 503, 408) or status >= 700 else SERVER_ERROR
    if 500 <= status < 600:
        return SERVER_ERROR
    return OTHER


def notice_for(outcome: Outcome, name: str, status: int, text: str) -> str:
    return outcome.notice.format(name=name, status=status, text=text or "").replace(" )", ")")


def sip_status_for_matrix_reject(reason: str) -> int:
    """What an unanswered inbound SIP call gets when the Matrix side says no."""
    if reason == "user_busy":
        return 486
    if reason == "invite_timeout":
        return 480
    return 603
