"""Opening the database: SQLite by default, PostgreSQL through asyncpg.

Every failure to open or upgrade becomes a one-line :class:`DatabaseError` that names the
database without its password.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.util.async_db import Database
from mautrix.util.logging import TraceLogger

from ..errors import DatabaseError
from .upgrade import upgrade_table

log = logging.getLogger(__name__)


def redact_url(url: str) -> str:
    """postgres://user:secret@host/db → postgres://user:***@host/db"""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _trace_logger(name: str) -> TraceLogger:
    logger = logging.getLogger(name)
    if not isinstance(logger, TraceLogger):  # mautrix sets the logger class on import
        logger.__class__ = TraceLogger
    return logger  # type: ignore[return-value]


async def open_database(url: str) -> Database:
    """Create, connect and upgrade the database (ours plus mautrix's state cache)."""
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:"))
        if str(path) != ":memory:" and not path.parent.is_dir():
            raise DatabaseError(f"cannot open database {url}: folder {path.parent} does not exist")
    try:
        db = Database.create(
            url,
            upgrade_table=upgrade_table,
            log=_trace_logger("bridge.db"),
            db_args={"min_size": 1, "max_size": 10} if url.startswith("postgres") else None,
        )
    except Exception as e:
        raise DatabaseError(f"{redact_url(url)}: {e}") from None
    try:
        await db.start()
        await PgASStateStore.upgrade_table.upgrade(db)
    except Exception as e:
        try:
            await db.stop()
        except Exception:
            log.debug("closing the database after a failed start failed", exc_info=True)
        reason = str(e).replace(url, redact_url(url)) or type(e).__name__
        raise DatabaseError(f"cannot open database {redact_url(url)}: {reason}") from None
    return db
