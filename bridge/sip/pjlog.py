"""pjsua2's own log, routed into Python logging (never stdout).

pjlib prints to stdout until ``libInit`` installs our writer, so :func:`silence_console`
turns its console level to 0 before ``libCreate``. Levels: pjsua 1 → ERROR, 2 → WARNING,
3 and above → DEBUG (pjsua's level-3 chatter repeats our own one-line call logs, and level 5
is whole SIP messages with SDP, which belong at DEBUG only).
"""

from __future__ import annotations

import ctypes
import logging

import pjsua2 as pj

from .pjlib import pjsua_lib

log = logging.getLogger("bridge.sip.pjsua")

_LEVELS = {0: logging.ERROR, 1: logging.ERROR, 2: logging.WARNING}


def silence_console() -> None:
    """Stop pjlib's default console writer before the Endpoint exists."""
    lib = pjsua_lib()
    lib.pj_log_set_level.argtypes = [ctypes.c_int]
    lib.pj_log_set_level(0)


class PjLogWriter(pj.LogWriter):
    """Called from whichever thread logs in pjsua2 (owner, clock, media): O(1), never raises."""

    def write(self, entry: pj.LogEntry) -> None:
        try:
            level = _LEVELS.get(int(entry.level), logging.DEBUG)
            if log.isEnabledFor(level):
                log.log(level, "%s", str(entry.msg).rstrip())
        except Exception:  # noqa: S110 - nothing may escape into pjsua2
            pass


def configure(ep_config: pj.EpConfig, writer: PjLogWriter, level: int) -> None:
    """Point the endpoint's log at ``writer`` with pjsua ``level`` (no console output)."""
    lc = ep_config.logConfig
    lc.writer = writer
    lc.level = level
    # pjsua passes an entry to the writer only up to consoleLevel; the global level
    # (pj_log_set_level, = ``level``) is the one filter, so it can be raised at run time
    lc.consoleLevel = 6
    lc.msgLogging = 1 if level >= 5 else 0
    lc.decor = pj.PJ_LOG_HAS_SENDER
