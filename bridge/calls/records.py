"""One call record per call: who, which company and extension, direction, times, outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mautrix.util.async_db import Database


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class CallRecord:
    id: str
    direction: str
    matrix_user: str
    room_id: str
    company: str
    extension: str
    matrix_call_id: str
    sip_call_id: str | None = None
    worker: int | None = None
    invited_at: int = 0
    answered_at: int | None = None
    ended_at: int | None = None
    outcome: str | None = None
    sip_status: int | None = None
    hangup_reason: str | None = None


class CallRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self, rec: CallRecord) -> None:
        rec.invited_at = rec.invited_at or now_ms()
        await self.db.execute(
            "INSERT INTO call_record (id, direction, matrix_user, room_id, company, extension,"
            " matrix_call_id, sip_call_id, worker, invited_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            rec.id, rec.direction, rec.matrix_user, rec.room_id, rec.company, rec.extension,
            rec.matrix_call_id, rec.sip_call_id, rec.worker, rec.invited_at,
        )

    async def set_sip(self, rec: CallRecord, sip_call_id: str, worker: int) -> None:
        rec.sip_call_id, rec.worker = sip_call_id, worker
        await self.db.execute(
            "UPDATE call_record SET sip_call_id=$2, worker=$3 WHERE id=$1",
            rec.id, sip_call_id, worker,
        )

    async def answered(self, rec: CallRecord) -> None:
        rec.answered_at = now_ms()
        await self.db.execute(
            "UPDATE call_record SET answered_at=$2 WHERE id=$1", rec.id, rec.answered_at
        )

    async def ended(self, rec: CallRecord, outcome: str, sip_status: int | None,
                    reason: str | None) -> None:
        rec.ended_at, rec.outcome, rec.sip_status, rec.hangup_reason = (
            now_ms(), outcome, sip_status, reason,
        )
        await self.db.execute(
            "UPDATE call_record SET ended_at=$2, outcome=$3, sip_status=$4, hangup_reason=$5"
            " WHERE id=$1 AND ended_at IS NULL",
            rec.id, rec.ended_at, outcome, sip_status, reason,
        )

    async def get(self, record_id: str) -> CallRecord | None:
        row = await self.db.fetchrow("SELECT * FROM call_record WHERE id=$1", record_id)
        return None if row is None else CallRecord(**dict(row))

    async def by_matrix_call(self, matrix_call_id: str) -> CallRecord | None:
        row = await self.db.fetchrow(
            "SELECT * FROM call_record WHERE matrix_call_id=$1", matrix_call_id
        )
        return None if row is None else CallRecord(**dict(row))


def duration_text(rec: CallRecord, now_ms: int | None = None) -> str:
    """m:ss (h:mm:ss past an hour) from the answer to the end, or to ``now_ms`` while the
    call still runs."""
    end = rec.ended_at if rec.ended_at is not None else now_ms
    if rec.answered_at is None or end is None:
        return "0:00"
    secs = max(0, (end - rec.answered_at) // 1000)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
