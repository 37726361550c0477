"""Schema versions of the bridge's own tables (mautrix async_db upgrade idiom).

Version 1 is the first schema. Later versions are added below as numbered upgrades; a fresh
database runs them all in order. `$1` placeholders work on both SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging

from mautrix.util.async_db import Connection, UpgradeTable

upgrade_table = UpgradeTable(
    version_table_name="bridge_version",
    database_name="matrix-sip-bridge",
    log=logging.getLogger("bridge.db.upgrade"),
)


@upgrade_table.register(description="Initial schema: processed transactions and events")  # type: ignore[call-arg, arg-type]
async def upgrade_v1(conn: Connection) -> None:
    await conn.execute(
        """CREATE TABLE processed_txn (
            txn_id      TEXT PRIMARY KEY,
            received_at BIGINT NOT NULL
        )"""
    )
    await conn.execute(
        """CREATE TABLE processed_event (
            event_id   TEXT PRIMARY KEY,
            handled_at BIGINT NOT NULL
        )"""
    )
    await conn.execute(
        """CREATE TABLE bot_room (
            room_id  TEXT PRIMARY KEY,
            user_id  TEXT NOT NULL,
            is_dm    BOOLEAN NOT NULL
        )"""
    )


@upgrade_table.register(description="Ghost profiles, DMs with ghosts, company rooms, settings")  # type: ignore[call-arg, arg-type]
async def upgrade_v2(conn: Connection) -> None:
    # One row per ghost the bridge has set up; `reachable` false once removed from the config.
    await conn.execute(
        """CREATE TABLE ghost (
            mxid        TEXT PRIMARY KEY,
            company     TEXT NOT NULL,
            extension   TEXT,
            displayname TEXT NOT NULL,
            avatar_key  TEXT,
            avatar_mxc  TEXT,
            reachable   BOOLEAN NOT NULL
        )"""
    )
    # The DM between one Matrix user and one ghost: where calls and texts happen.
    await conn.execute(
        """CREATE TABLE dm_room (
            room_id    TEXT PRIMARY KEY,
            user_id    TEXT NOT NULL,
            ghost_mxid TEXT NOT NULL,
            created_at BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE UNIQUE INDEX dm_room_pair ON dm_room (user_id, ghost_mxid)")
    await conn.execute(
        """CREATE TABLE company_room (
            company TEXT PRIMARY KEY,
            room_id TEXT NOT NULL
        )"""
    )
    await conn.execute(
        """CREATE TABLE user_setting (
            user_id         TEXT PRIMARY KEY,
            default_company TEXT
        )"""
    )


@upgrade_table.register(description="Call records")  # type: ignore[call-arg, arg-type]
async def upgrade_v3(conn: Connection) -> None:
    await conn.execute(
        """CREATE TABLE call_record (
            id             TEXT PRIMARY KEY,
            direction      TEXT NOT NULL,
            matrix_user    TEXT NOT NULL,
            room_id        TEXT NOT NULL,
            company        TEXT NOT NULL,
            extension      TEXT NOT NULL,
            matrix_call_id TEXT NOT NULL,
            sip_call_id    TEXT,
            worker         INTEGER,
            invited_at     BIGINT NOT NULL,
            answered_at    BIGINT,
            ended_at       BIGINT,
            outcome        TEXT,
            sip_status     INTEGER,
            hangup_reason  TEXT
        )"""
    )
    await conn.execute("CREATE INDEX call_record_user ON call_record (matrix_user, invited_at)")
    await conn.execute("CREATE INDEX call_record_company ON call_record (company, invited_at)")


@upgrade_table.register(description="Text messages bridged between Matrix and SIP")  # type: ignore[call-arg, arg-type]
async def upgrade_v4(conn: Connection) -> None:
    await conn.execute(
        """CREATE TABLE message_map (
            event_id    TEXT PRIMARY KEY,
            room_id     TEXT NOT NULL,
            direction   TEXT NOT NULL,
            company     TEXT NOT NULL,
            extension   TEXT NOT NULL,
            sip_status  INTEGER,
            sip_reason  TEXT,
            created_at  BIGINT NOT NULL
        )"""
    )


@upgrade_table.register(description="Numbers mapped to Matrix users at run time")  # type: ignore[call-arg, arg-type]
async def upgrade_v5(conn: Connection) -> None:
    await conn.execute(
        """CREATE TABLE number_map (
            company    TEXT NOT NULL,
            number     TEXT NOT NULL,
            user_id    TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (company, number)
        )"""
    )


@upgrade_table.register(description="Companies linked at run time (commands, provisioning API)")  # type: ignore[call-arg, arg-type]
async def upgrade_v6(conn: Connection) -> None:
    await conn.execute(
        """CREATE TABLE company (
            slug       TEXT PRIMARY KEY,
            data       TEXT NOT NULL,
            created_by TEXT NOT NULL,
            updated_at BIGINT NOT NULL
        )"""
    )
