"""Logging setup: human-readable lines by default, levels per module from the config.

A filter replaces every configured secret with `***` in case one ever reaches a log call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

from .config import LoggingConfig

#: The correlation ID of the call the current task works on (its Matrix call ID).
CALL_ID: ContextVar[str | None] = ContextVar("bridge_call_id", default=None)


@contextlib.contextmanager
def call_context(call_id: str | None) -> Iterator[None]:
    """Log lines inside carry ``call_id`` (tasks created inside inherit it)."""
    token = CALL_ID.set(call_id)
    try:
        yield
    finally:
        CALL_ID.reset(token)


class CallIdFilter(logging.Filter):
    """Sets ``record.call_id``: given with ``extra=`` (worker lines), else the task's call."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "call_id", None):
            record.call_id = CALL_ID.get()
        return True


def add_secret(secret: str) -> None:
    """Scrub this secret (learnt after start: a PBX password given at run time) from every
    log line from now on: added to the secret filters of the root logger's handlers."""
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, SecretFilter):
                f.add(secret)


class SecretFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def add(self, secret: str) -> None:
        if secret and len(secret) >= 4 and secret not in self.secrets:
            self.secrets.append(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        msg = record.getMessage()
        if any(s in msg for s in self.secrets):
            for s in self.secrets:
                msg = msg.replace(s, "***")
            record.msg, record.args = msg, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id:
            out["call_id"] = call_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(cfg: LoggingConfig | None, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg is not None and cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(CallIdFilter())
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(cfg.level if cfg else "INFO")
    # mautrix logs every request at DEBUG; keep it quieter unless asked.
    logging.getLogger("mau").setLevel("INFO")
    logging.getLogger("aiohttp.access").setLevel("WARNING")
    if cfg is not None:
        for name, level in cfg.levels.items():
            logging.getLogger(name).setLevel(level)
