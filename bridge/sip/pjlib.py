"""The pjsua2 wheel's shared library, for the few C functions pjsua2 does not wrap.

Used by :mod:`.pjlog` (console level before ``libCreate``), :mod:`.sourcefilter` (a pjsip
module that answers 403 before pjsua sees a request) and :mod:`.framecopy` (nothing from C,
but the same "check it at start" spirit). Every use is guarded by a self-test.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pjsua2


@functools.cache
def pjsua_lib() -> ctypes.CDLL:
    """``_pjsua2*.so`` of the installed wheel (already loaded by ``import pjsua2``)."""
    package = Path(pjsua2.__file__).parent
    candidates = sorted(package.glob("_pjsua2*.so")) + sorted(package.glob("_pjsua2*.pyd"))
    if not candidates:
        raise OSError(f"no _pjsua2 library in {package}")
    return ctypes.CDLL(str(candidates[0]))


def pj_reason(e: BaseException) -> str:
    """A one-line reason from a ``pjsua2.Error`` (or any exception)."""
    reason = getattr(e, "reason", None)
    title = getattr(e, "title", None)
    if reason:
        return f"{title}: {reason}" if title else str(reason)
    return str(e) or repr(e)


def pjsua_call_count() -> tuple[int, int]:
    """(calls pjsua holds now, the most it holds): pjsua keeps a call we consider ended
    until its BYE is answered or its INVITE transaction ends (up to 32 s), and refuses new
    calls (``PJ_ETOOMANY``, or 486 to an INVITE) while it is full."""
    count, most = _call_count_functions()
    return int(count()), int(most())


@functools.cache
def _call_count_functions() -> tuple[Any, Any]:
    lib = pjsua_lib()
    lib.pjsua_call_get_count.restype = ctypes.c_uint
    lib.pjsua_call_get_max_count.restype = ctypes.c_uint
    return lib.pjsua_call_get_count, lib.pjsua_call_get_max_count


def pjsua_call_dumps(skip: Collection[int] = (), limit: int = 8) -> list[str]:
    """pjsua's own one-paragraph dump of each call it holds, except the ids in ``skip``
    (at most ``limit``; pjsua's owner thread only). For the log when pjsua is full."""
    lib = pjsua_lib()
    ids = (ctypes.c_int * 64)()
    count = ctypes.c_uint(64)
    if lib.pjsua_enum_calls(ids, ctypes.byref(count)) != 0:
        return []
    out: list[str] = []
    buf = ctypes.create_string_buffer(2048)
    for call_id in list(ids[: count.value]):
        if len(out) >= limit:
            break
        if call_id in skip:
            continue
        if lib.pjsua_call_dump(call_id, 0, buf, len(buf), b"  ") == 0:
            out.append(f"call {call_id}: " + " ".join(buf.value.decode("utf-8", "replace").split()))
    return out
