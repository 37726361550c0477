"""Requests the source filter takes over from pjsua and answers later (owner thread).

pjsua answers an out-of-dialog MESSAGE with 200 before the application sees it, so the PBX
would learn "delivered" even when the Matrix user does not exist or the homeserver is down.
For an admitted MESSAGE the source filter module instead creates a UAS transaction of its
own (the module is the transaction's user), keeps a clone of the request, and returns
"handled": pjsua never sees it. The controller's verdict (200 once the Matrix event is sent,
404, 403, 480 …) is answered on that transaction later; retransmissions meanwhile are
absorbed by pjsip's transaction layer. A request not answered within ``timeout_s`` gets 480.

A transaction that changes state before we answered (its transport closed, say) is dropped
from our table at once, so we never touch a transaction pjsip has destroyed.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
from typing import Any

log = logging.getLogger(__name__)

TSX_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class TakenRequests:
    def __init__(self, lib: Any, endpt: int, module: Any) -> None:
        self._lib = lib
        self._endpt = endpt
        self._module = module  # the registered pjsip_module (ctypes structure)
        self._keys = itertools.count(1)
        #: key → (transaction, cloned rx_data)
        self._taken: dict[int, tuple[int, int]] = {}
        self._by_tsx: dict[int, int] = {}
        v, p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        lib.pjsip_tsx_create_uas2.argtypes = [v, v, v, p]
        lib.pjsip_tsx_recv_msg.argtypes = [v, v]
        lib.pjsip_tsx_recv_msg.restype = None
        lib.pjsip_rx_data_clone.argtypes = [v, ctypes.c_uint, p]
        lib.pjsip_rx_data_free_cloned.argtypes = [v]
        lib.pjsip_endpt_create_response.argtypes = [v, v, ctypes.c_int, v, p]
        lib.pjsip_tsx_send_msg.argtypes = [v, v]
        lib.pjsip_tsx_terminate.argtypes = [v, ctypes.c_int]

    def take(self, rdata: int) -> int | None:
        """A UAS transaction for this new request; its key, or None (pjsua takes it then)."""
        clone = ctypes.c_void_p()
        if self._lib.pjsip_rx_data_clone(rdata, 0, ctypes.byref(clone)) != 0 or not clone:
            return None
        tsx = ctypes.c_void_p()
        status = self._lib.pjsip_tsx_create_uas2(ctypes.byref(self._module), rdata, None,
                                                 ctypes.byref(tsx))
        if status != 0 or not tsx.value:
            self._lib.pjsip_rx_data_free_cloned(clone)
            return None
        self._lib.pjsip_tsx_recv_msg(tsx, rdata)
        key = next(self._keys)
        self._taken[key] = (tsx.value, clone.value or 0)
        self._by_tsx[tsx.value] = key
        return key

    def answer(self, key: int, status: int) -> bool:
        """Send the final response; False when the transaction is gone (or the key unknown)."""
        entry = self._taken.pop(key, None)
        if entry is None:
            return False
        tsx, clone = entry
        self._by_tsx.pop(tsx, None)
        try:
            tdata = ctypes.c_void_p()
            if self._lib.pjsip_endpt_create_response(self._endpt, clone, status, None,
                                                     ctypes.byref(tdata)) == 0 and tdata.value:
                if self._lib.pjsip_tsx_send_msg(tsx, tdata) == 0:
                    return True
            log.warning("could not answer a taken request with %d; terminating it", status)
            self._lib.pjsip_tsx_terminate(tsx, 500)
            return False
        finally:
            self._lib.pjsip_rx_data_free_cloned(clone)

    def on_tsx_state(self, tsx: int | None, _event: int | None) -> None:
        """pjsip reports a state change of a transaction we own: before our answer, that
        means it is going away (we answer through :meth:`answer` only)."""
        key = self._by_tsx.pop(tsx or 0, None)
        if key is None:
            return
        entry = self._taken.pop(key, None)
        if entry is not None:
            log.info("taken request %d: its transaction ended before our answer", key)
            self._lib.pjsip_rx_data_free_cloned(entry[1])

    def pending(self) -> list[int]:
        return list(self._taken)

    def __len__(self) -> int:
        return len(self._taken)
