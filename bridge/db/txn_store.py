"""Persistent deduplication of appservice transactions and Matrix events.

The homeserver retries a transaction until it gets 200; after a restart the bridge must still
recognise transactions and events it already handled.
"""

from __future__ import annotations

import time

from mautrix.util.async_db import Database

KEEP_SECONDS = 7 * 24 * 3600


class TxnStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def is_processed(self, txn_id: str) -> bool:
        row = await self.db.fetchval("SELECT 1 FROM processed_txn WHERE txn_id=$1", txn_id)
        return row is not None

    async def mark_processed(self, txn_id: str) -> None:
        await self.db.execute(
            "INSERT INTO processed_txn (txn_id, received_at) VALUES ($1, $2) "
            "ON CONFLICT (txn_id) DO NOTHING",
            txn_id,
            int(time.time() * 1000),
        )

    async def claim_event(self, event_id: str) -> bool:
        """Record an event as handled; False if it was handled before."""
        inserted = await self.db.fetchval(
            "INSERT INTO processed_event (event_id, handled_at) VALUES ($1, $2) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            event_id,
            int(time.time() * 1000),
        )
        return inserted is not None

    async def prune(self, now_ms: int | None = None) -> None:
        cutoff = (now_ms or int(time.time() * 1000)) - KEEP_SECONDS * 1000
        await self.db.execute("DELETE FROM processed_txn WHERE received_at < $1", cutoff)
        await self.db.execute("DELETE FROM processed_event WHERE handled_at < $1", cutoff)
