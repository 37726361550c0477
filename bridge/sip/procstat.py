"""``/proc/PID/stat`` of a process or thread (Linux): the fields after the command name.

The command name sits in parentheses and may itself hold spaces and parentheses, so the
fields are split after its last ``)``. They are numbered here from ``state`` on, as proc(5)
numbers them from 3: :data:`STATE` is proc(5)'s field 3, :data:`PPID` field 4, and so on.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")
STATE, PPID, UTIME, STIME, RSS_PAGES = 0, 1, 11, 12, 21


def parse(text: str) -> list[str]:
    """The fields of one stat line after the command name."""
    fields = text[text.rindex(")") + 2:].split()
    if len(fields) <= RSS_PAGES:
        raise ValueError(f"too few fields in {text[:60]!r}")
    return fields


def stat_fields(pid: int, tid: int | None = None, proc: Path = PROC) -> list[str]:
    """The fields of a process (or of one of its threads); OSError when it is gone."""
    path = proc / str(pid) / "stat" if tid is None else proc / str(pid) / "task" / str(tid) / "stat"
    return parse(path.read_bytes().decode(errors="replace"))


def cpu_seconds(fields: list[str]) -> float:
    """User and system CPU time so far."""
    return (int(fields[UTIME]) + int(fields[STIME])) / CLK_TCK
