"""A pjsip module registered from Python through ctypes (owner thread).

pjsua2 offers no way to see SIP messages before pjsua handles them, but the wheel exports
``pjsip_endpt_register_module``: a ``pjsip_module`` struct with C callbacks. This holds that
struct, its name and its callbacks alive for as long as the module is registered (ctypes
callbacks that are garbage-collected crash pjsip), and registers and unregisters it.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

from .pjlib import pjsua_lib
from .uas_tsx import TSX_CB

log = logging.getLogger(__name__)


class PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


#: on_rx_request(rdata) and on_tx_response(tdata): non-zero when the message was consumed.
MSG_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class ModuleStruct(ctypes.Structure):
    """``pjsip_module`` (pjsip/sip_module.h)."""

    _fields_ = [
        ("prev", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("name", PjStr),
        ("id", ctypes.c_int),
        ("priority", ctypes.c_int),
        ("load", ctypes.c_void_p),
        ("start", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
        ("unload", ctypes.c_void_p),
        ("on_rx_request", MSG_CB),
        ("on_rx_response", ctypes.c_void_p),
        ("on_tx_request", ctypes.c_void_p),
        ("on_tx_response", MSG_CB),
        ("on_tsx_state", TSX_CB),
    ]


class PjModule:
    """One module: its callbacks run in the thread that polls SIP and must never raise."""

    def __init__(self, name: str, priority: int, *,
                 on_rx_request: Callable[[int | None], int] | None = None,
                 on_tx_response: Callable[[int | None], int] | None = None,
                 on_tsx_state: Callable[[int | None, int | None], None] | None = None) -> None:
        self.name = name
        self.lib = pjsua_lib()
        self.lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        self.lib.pjsip_endpt_register_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pjsip_endpt_unregister_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._name = ctypes.create_string_buffer(name.encode())
        self.struct = ModuleStruct()
        self.struct.name = PjStr(ctypes.cast(self._name, ctypes.c_char_p), len(self._name.value))
        self.struct.id = -1
        self.struct.priority = priority
        # the ctypes callbacks live as long as this object (the struct only points at them)
        self._callbacks: list[object] = []
        if on_rx_request is not None:
            rx = MSG_CB(on_rx_request)
            self._callbacks.append(rx)
            self.struct.on_rx_request = rx
        if on_tx_response is not None:
            tx = MSG_CB(on_tx_response)
            self._callbacks.append(tx)
            self.struct.on_tx_response = tx
        if on_tsx_state is not None:
            tsx = TSX_CB(on_tsx_state)
            self._callbacks.append(tsx)
            self.struct.on_tsx_state = tsx
        self.endpt: int | None = None

    @property
    def installed(self) -> bool:
        return self.endpt is not None

    def install(self) -> bool:
        """Register with pjsua's endpoint (after ``libInit``); False if that failed."""
        endpt = self.lib.pjsua_get_pjsip_endpt()
        if not endpt:
            return False
        status = self.lib.pjsip_endpt_register_module(endpt, ctypes.byref(self.struct))
        if status != 0:
            log.warning("could not register the pjsip module %s (pj status %d)", self.name,
                        status)
            return False
        self.endpt = endpt
        return True

    def uninstall(self) -> None:
        """Unregister (before ``libDestroy``); safe to call when not installed."""
        if self.endpt is not None:
            self.lib.pjsip_endpt_unregister_module(self.endpt, ctypes.byref(self.struct))
        self.endpt = None
