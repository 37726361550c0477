"""The bridge's database on both back ends: SQLite (default) and the machine's PostgreSQL."""

from __future__ import annotations

from bridge.db.database import open_database, redact_url
from bridge.db.txn_store import TxnStore
from bridge.db.upgrade import upgrade_table


async def test_upgrade_from_empty_and_start_twice(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        version = await db.fetchval("SELECT version FROM bridge_version")
        assert version == len(upgrade_table.upgrades) >= 1
        assert await db.table_exists("processed_txn")
        assert await db.table_exists("mx_user_profile")  # mautrix's state cache
    finally:
        await db.stop()
    # Starting again on the upgraded database is a no-op that keeps the data.
    db = await open_database(database_url)
    try:
        await TxnStore(db).mark_processed("txn-1")
    finally:
        await db.stop()
    db = await open_database(database_url)
    try:
        assert await db.fetchval("SELECT version FROM bridge_version") == version
        assert await TxnStore(db).is_processed("txn-1")
    finally:
        await db.stop()


async def test_transactions_and_events_are_deduplicated(database_url: str) -> None:
    db = await open_database(database_url)
    try:
        store = TxnStore(db)
        assert not await store.is_processed("t")
        await store.mark_processed("t")
        await store.mark_processed("t")  # idempotent
        assert await store.is_processed("t")
        assert await store.claim_event("$e1")
        assert not await store.claim_event("$e1")
        assert await store.claim_event("$e2")
        await store.prune(now_ms=10**15)  # far future: everything is old
        assert not await store.is_processed("t")
    finally:
        await db.stop()


def test_redact_url() -> None:
    assert redact_url("postgres://u:pw@h:5432/d") == "postgres://u:***@h:5432/d"
    assert redact_url("sqlite:x.db") == "sqlite:x.db"
