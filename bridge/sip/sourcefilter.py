"""A pjsip module, registered through ctypes, that answers requests before pjsua2 does.

Why: pjsua answers an out-of-dialog MESSAGE with 200 *before* telling the application, and
answers a fifth INVITE with 486 on its own. To answer a MESSAGE or INVITE from a source that
no link admits with 403, one without the digest credentials its company requires with 401
(and a ``WWW-Authenticate`` challenge) or 403, and a call beyond this worker's capacity with
503, we need a module that sees the request first. pjsua2 offers none, but the wheel exports
``pjsip_endpt_register_module`` and ``pjsip_endpt_respond_stateless``, and for the challenge
header ``pjsip_generic_string_hdr_create``: the header is made in the request's pool (the
first field of ``pjsip_rx_data``) and handed over in a list whose head is ours (pjlib lists:
``prev`` at offset 0, ``next`` at offset 8; pjsip clones the headers into the response). If
that function were missing, a 401 verdict is answered 403 instead (never let through).

The module sits just above the transaction layer (priority 31: after retransmission matching,
before the dialog/UA layer and pjsua). Reading the source address out of ``pjsip_rx_data``
needs that struct's layout, which depends on ``PJSIP_MAX_PKT_LEN`` (read from
``pjsip_dump_config`` at start). Every request is checked against the layout (message pointer
inside the packet buffer, text starting with the method, source name and port agreeing with
the socket address); if the check fails, the module steps aside (returns "not handled") and
the same decision is taken later in pjsua2's callbacks, where only the MESSAGE answer (already
200) cannot be changed. ``installed`` and ``layout_ok`` tell which path is live.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Sequence

from .pjmodule import PjModule, PjStr
from .uas_tsx import TakenRequests

log = logging.getLogger(__name__)

PRIORITY = 31  # PJSIP_MOD_PRIORITY_UA_PROXY_LAYER - 1
_PTR = ctypes.sizeof(ctypes.c_void_p)

#: extra headers of a stateless answer: (name, value) pairs
Headers = Sequence[tuple[str, str]]
#: decide(message text, source ip) → (0, ()) to let pjsua handle it, (status, headers) to
#: answer with, or (TAKE, ()) to take the request over and answer it later.
Decider = Callable[[str, str], tuple[int, Headers]]
#: the decider's "take it over" verdict (see :mod:`.uas_tsx`)
TAKE = -1
#: on_taken(key, message text, source ip:port): a request taken over, answered by key
TakenHandler = Callable[[int, str, str], None]


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class RdataLayout:
    """Offsets into ``pjsip_rx_data`` for a given ``PJSIP_MAX_PKT_LEN`` (64-bit Linux)."""

    def __init__(self, max_pkt_len: int) -> None:
        # tp_info: pool, transport, tp_data, op_key{ioqueue op_key (32+2 pointers), rdata}
        tp_info = 3 * _PTR + (34 * _PTR + _PTR)
        self.packet = tp_info + 16  # pkt_info.timestamp (pj_time_val: two longs)
        self.max_pkt_len = max_pkt_len
        zero = self.packet + max_pkt_len
        self.len = _align(zero + 4, _PTR)
        self.src_addr = self.len + _PTR
        self.src_name = _align(self.src_addr + 28 + 4, 4)  # pj_sockaddr (28), src_addr_len
        self.src_port = _align(self.src_name + 46, 4)
        self.msg_buf = _align(self.src_port + 4, _PTR)
        self.msg_len = self.msg_buf + _PTR

    def read(self, rdata: int) -> tuple[str, str] | None:
        """(message text, source ip), or None when the memory does not look as expected."""
        family = ctypes.c_uint16.from_address(rdata + self.src_addr).value
        if family not in (socket.AF_INET, socket.AF_INET6):
            return None
        port_be = ctypes.c_uint16.from_address(rdata + self.src_addr + 2).value
        src_port = ctypes.c_int.from_address(rdata + self.src_port).value
        if socket.ntohs(port_be) != src_port:
            return None
        raw = ctypes.string_at(rdata + self.src_name, 46).split(b"\0", 1)[0]
        name = raw.decode("ascii", "replace")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return None
        buf = ctypes.c_void_p.from_address(rdata + self.msg_buf).value or 0
        length = ctypes.c_int.from_address(rdata + self.msg_len).value
        start = rdata + self.packet
        end = start + self.max_pkt_len
        if not (start <= buf < end) or not 0 < length <= end - buf:
            return None  # the message must lie inside the packet buffer, never past it
        text = ctypes.string_at(buf, length).decode("utf-8", "replace")
        if not re.match(r"[A-Za-z]+ \S+ SIP/2\.0\r?\n", text):
            return None
        return text, name


def max_pkt_len_from_dump(lines: list[str]) -> int | None:
    for line in lines:
        m = re.search(r"PJSIP_MAX_PKT_LEN\s*:\s*(\d+)", line)
        if m:
            return int(m.group(1))
    return None


class SourceFilter:
    """Install with :meth:`install` after ``libInit``; :meth:`uninstall` before ``libDestroy``.

    Runs in the pjsua2 owner thread (SIP is polled there), so ``decide`` may read the owner's
    state without locks.
    """

    def __init__(self, decide: Decider, max_pkt_len: int, *,
                 on_taken: TakenHandler | None = None) -> None:
        self._decide = decide
        self._on_taken = on_taken
        self.taken: TakenRequests | None = None
        self._layout = RdataLayout(max_pkt_len)
        self._pjmod = PjModule("mod-bridge-source-filter", PRIORITY,
                               on_rx_request=self._on_rx_request,
                               on_tsx_state=self._on_tsx_state)
        self._lib = self._pjmod.lib
        self._lib.pjsip_endpt_respond_stateless.argtypes = [
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        try:
            create = self._lib.pjsip_generic_string_hdr_create
            create.restype = ctypes.c_void_p
            create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            self._create_hdr: Callable[..., int | None] | None = create
        except AttributeError:
            log.warning("pjsip_generic_string_hdr_create is not exported: digest challenges "
                        "are answered 403")
            self._create_hdr = None
        self.layout_ok: bool | None = None  # None until the first request
        self.answered = 0

    @property
    def installed(self) -> bool:
        return self._pjmod.installed

    def install(self) -> bool:
        if not self._pjmod.install():
            return False
        if self._on_taken is not None:
            assert self._pjmod.endpt is not None
            self.taken = TakenRequests(self._lib, self._pjmod.endpt, self._pjmod.struct)
        return True

    def uninstall(self) -> None:
        if self.taken is not None:
            for key in self.taken.pending():
                self.taken.answer(key, 503)
        self._pjmod.uninstall()

    def _on_rx_request(self, rdata: int | None) -> int:
        try:
            if not rdata:
                return 0
            seen = self._layout.read(rdata)
            if seen is None:
                if self.layout_ok is not False:
                    log.warning("pjsip_rx_data layout not as expected; source filter steps aside")
                self.layout_ok = False
                return 0
            self.layout_ok = True
            text, source = seen
            status, headers = self._decide(text, source)
            if status == TAKE:
                key = self.taken.take(rdata) if self.taken is not None else None
                if key is None or self._on_taken is None:
                    return 0  # pjsua handles it as before
                port = ctypes.c_int.from_address(rdata + self._layout.src_port).value
                self._on_taken(key, text, f"[{source}]:{port}" if ":" in source
                               else f"{source}:{port}")
                return 1
            if not status:
                return 0
            head = _HdrList() if headers else None
            if head is not None and not self._make_headers(rdata, head, headers):
                status, head = 403, None
            self._lib.pjsip_endpt_respond_stateless(
                self._pjmod.endpt, rdata, status, None,
                ctypes.addressof(head) if head is not None else None, None)
            self.answered += 1
            return 1
        except Exception:
            log.exception("source filter failed; request left to pjsua")
            return 0

    def _on_tsx_state(self, tsx: int | None, event: int | None) -> None:
        try:
            if self.taken is not None:
                self.taken.on_tsx_state(tsx, event)
        except Exception:
            log.exception("transaction state callback failed")

    def answer(self, key: int, status: int) -> bool:
        """Answer a request taken over (owner thread)."""
        return self.taken.answer(key, status) if self.taken is not None else False

    def _make_headers(self, rdata: int, head: _HdrList, headers: Headers) -> bool:
        """Create ``headers`` in the request's pool and link them after ``head``."""
        pool = ctypes.c_void_p.from_address(rdata).value  # rdata->tp_info.pool
        if not pool or self._create_hdr is None:
            return False
        for name, value in headers:
            n, v = name.encode(), value.encode()
            n_str = PjStr(n, len(n))
            v_str = PjStr(v, len(v))
            hdr = self._create_hdr(pool, ctypes.byref(n_str), ctypes.byref(v_str))
            if not hdr:
                return False
            head.append(hdr)
        return True


class _HdrList(ctypes.Structure):
    """The head of a pjsip header list (a ``pjsip_hdr`` whose links alone are read)."""

    _fields_ = [("prev", ctypes.c_void_p), ("next", ctypes.c_void_p),
                ("rest", ctypes.c_byte * 48)]

    def __init__(self) -> None:
        super().__init__()
        self.prev = self.next = ctypes.addressof(self)

    def append(self, hdr: int) -> None:
        """Link the ``pjsip_hdr`` at ``hdr`` at the end (PJ_DECL_LIST_MEMBER: prev, next)."""
        me = ctypes.addressof(self)
        last = self.prev or me
        ctypes.c_void_p.from_address(hdr).value = last
        ctypes.c_void_p.from_address(hdr + _PTR).value = me
        ctypes.c_void_p.from_address(last + _PTR).value = hdr
        self.prev = hdr
