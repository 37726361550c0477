""""Call ended · m:ss" and the calls command's lengths come from one function."""

from __future__ import annotations

from bridge.calls.records import CallRecord, duration_text


def rec(answered: int | None, ended: int | None) -> CallRecord:
    return CallRecord(id="r", direction="outbound", matrix_user="@a:b", room_id="!r:b",
                      company="acme", extension="100", matrix_call_id="c",
                      answered_at=answered, ended_at=ended)


def test_duration_of_ended_running_and_unanswered_calls() -> None:
    assert duration_text(rec(1_000, 66_999)) == "1:05"
    assert duration_text(rec(0, 3_725_000)) == "1:02:05"
    assert duration_text(rec(1_000, None), now_ms=11_500) == "0:10"
    assert duration_text(rec(1_000, None)) == "0:00"
    assert duration_text(rec(None, 5_000)) == "0:00"
