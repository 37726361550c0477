"""A pjsip module that hands on the NOTIFYs pjsua accepted, body and all (owner thread).

Why: pjsua2 2.15 wraps presence subscriptions (``Buddy``) but passes the application only
pjsua's own reading of a PIDF (RPID ``on-the-phone`` is lost), and nothing for the ``dialog``
event package: pjsua subscribes to it (``pjsua_buddy_subscribe_dlg_event``) and answers its
NOTIFYs, but its ``on_buddy_dlg_event_state`` callback is not wrapped by pjsua2 and it keeps
only the first ``<dialog>`` of a document. So the bodies are read here, the way the source
filter reads requests (:class:`~.sourcefilter.RdataLayout`):

- ``on_rx_request`` (priority 30: after the transaction layer, before the dialog layer)
  keeps the text of each incoming NOTIFY aside;
- ``on_tx_response`` sees pjsua's answer to it (``pjsip_tx_data_get_info``: ``Response msg
  200/NOTIFY/cseq=N``, sent while the NOTIFY is being handled). Only a 2xx with the same
  CSeq releases the text to ``accepted``: the NOTIFY belonged to one of our subscription
  dialogs and pjsua took it. One that matches no dialog gets 481 and is forgotten, so a
  forged NOTIFY never reaches the watcher.

Both callbacks are O(1) apart from one NOTIFY's parsing, never raise, and never consume a
message. :attr:`installed` is False when the wheel lacks a function or the layout is unknown.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Callable

from .pjmodule import PjModule
from .sourcefilter import RdataLayout

log = logging.getLogger(__name__)

PRIORITY = 30  # before the source filter (31) and the UA layer (32)

#: accepted(message text, source ip): a NOTIFY pjsua answered with 2xx.
Accepted = Callable[[str, str], None]

_INFO = re.compile(r"Response msg (\d{3})/NOTIFY/cseq=(\d+) ")
_CSEQ = re.compile(r"^(?:CSeq)[ \t]*:[ \t]*(\d+)[ \t]+NOTIFY\b", re.IGNORECASE | re.MULTILINE)


class NotifyObserver:
    """Install after ``libInit`` with the packet size of the source filter's layout;
    :meth:`uninstall` before ``libDestroy``."""

    def __init__(self, accepted: Accepted, max_pkt_len: int) -> None:
        self._accepted = accepted
        self._layout = RdataLayout(max_pkt_len)
        self._pjmod = PjModule("mod-bridge-notify-observer", PRIORITY,
                               on_rx_request=self._on_rx_request,
                               on_tx_response=self._on_tx_response)
        self._lib = self._pjmod.lib
        self._lib.pjsip_tx_data_get_info.restype = ctypes.c_char_p
        self._lib.pjsip_tx_data_get_info.argtypes = [ctypes.c_void_p]
        #: (cseq, text, source ip) of the NOTIFY being handled
        self._pending: tuple[int, str, str] | None = None
        self.accepted = 0

    @property
    def installed(self) -> bool:
        return self._pjmod.installed

    def install(self) -> bool:
        return self._pjmod.install()

    def uninstall(self) -> None:
        self._pjmod.uninstall()
        self._pending = None

    def _on_rx_request(self, rdata: int | None) -> int:
        self._pending = None
        try:
            if not rdata:
                return 0
            seen = self._layout.read(rdata)
            if seen is None or not seen[0].startswith("NOTIFY "):
                return 0
            text, source = seen
            head = text.split("\r\n\r\n", 1)[0]
            m = _CSEQ.search(head)
            if m:
                self._pending = (int(m.group(1)), text, source)
        except Exception:
            log.exception("NOTIFY observer failed on a request")
        return 0

    def _on_tx_response(self, tdata: int | None) -> int:
        try:
            pending = self._pending
            if pending is None or not tdata:
                return 0
            info = self._lib.pjsip_tx_data_get_info(tdata) or b""
            m = _INFO.match(info.decode("ascii", "replace"))
            if m is None or int(m.group(2)) != pending[0] or m.group(1) < "200":
                return 0
            self._pending = None
            if m.group(1).startswith("2"):
                self.accepted += 1
                self._accepted(pending[1], pending[2])
        except Exception:
            log.exception("NOTIFY observer failed on a response")
        return 0
