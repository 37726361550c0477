"""A lasting Python thread state for pjmedia's clock thread.

pjmedia's clock thread is not a Python thread. Each time it calls into Python (the SWIG
director of an ``AudioMediaPort`` callback: up to two per port every 20 ms), SWIG wraps the
call in ``PyGILState_Ensure``/``PyGILState_Release``. With no thread state kept for that
thread, Ensure creates a new one (a ``gettid``, an ``mmap`` for its frame stack, the
interpreter's thread list under its lock) and Release destroys it again (a ``munmap``):
``strace -c`` on the clock thread of a worker with 4 calls counted 400 of each per second,
and ``bench/clock_callbacks.py`` measures what each callback costs either way.

:func:`keep_thread_state` takes one more ``PyGILState_Ensure`` for the calling thread and
does not give it back, so the thread's count of Ensure calls never drops to zero and its
thread state lives as long as the thread: SWIG's Ensure/Release then only take and give
back the GIL. It runs inside the callbacks (holding the GIL, where an extra Ensure only
counts up) and returns at once after its first call in a thread: the mark is a
``threading.local`` attribute, which lives in the thread state itself, so a thread state
made anew (a new clock thread) is kept again and a reused thread ident cannot fool it.

pjsua closes the null sound device a second after its last call and starts a new clock
thread for the next call, so clock threads come and go. The thread state of one that has
ended is freed (``PyThreadState_Clear`` and ``PyThreadState_Delete``, with the GIL held) the
next time a new thread is kept, once ``/proc/self/task`` shows that its thread is gone:
nothing piles up however often the worker goes idle. Threads Python started (the main
thread, ``threading`` threads, as in tests that call the callbacks directly) are left alone:
Python frees their thread state itself when they end.
"""

from __future__ import annotations

import ctypes
import os
import threading

_api = ctypes.pythonapi
_ensure = _api.PyGILState_Ensure
_ensure.restype = ctypes.c_int
_ensure.argtypes = []
_current = _api.PyThreadState_Get
_current.restype = ctypes.c_void_p
_current.argtypes = []
_clear = _api.PyThreadState_Clear
_clear.restype = None
_clear.argtypes = [ctypes.c_void_p]
_delete = _api.PyThreadState_Delete
_delete.restype = None
_delete.argtypes = [ctypes.c_void_p]


class _Mark(threading.local):
    kept = False


_mark = _Mark()
#: native thread id → the address of its kept thread state
_kept: dict[int, int] = {}
freed = 0


def keep_thread_state() -> None:
    """Keep the calling thread's Python thread state until the thread ends (idempotent;
    call it holding the GIL). A thread Python started already has a lasting thread state,
    which Python itself frees when the thread ends: it is left alone."""
    if _mark.kept:
        return
    _mark.kept = True
    started = threading._active.get(threading.get_ident())  # type: ignore[attr-defined]
    if started is not None and not isinstance(started, threading._DummyThread):
        return
    _free_ended()
    _ensure()
    _kept[threading.get_native_id()] = _current()


def _free_ended() -> None:
    global freed
    for tid, state in list(_kept.items()):
        if not os.path.exists(f"/proc/self/task/{tid}"):
            del _kept[tid]
            _clear(state)
            _delete(state)
            freed += 1


def kept_threads() -> list[int]:
    """Native ids of the threads whose thread state is kept now."""
    return list(_kept)
