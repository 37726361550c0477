"""Extension states from the PBX: one SUBSCRIBE dialog per extension (owner thread).

For each company whose link has ``presence`` on, the company's home worker keeps a
subscription to ``sip:EXT@<pbx>`` for the ``dialog`` (RFC 4235) or ``presence`` (PIDF) event
package, through the company's Account, and reports each change of an extension's state as
``ipc.ExtensionState``: busy while it has a call, online when idle, offline when its
subscription fails or ends (404, 403, timeout, terminated by the PBX).

How, with pjsua2 2.15:

- Subscriptions are pjsua buddies (a pjsua2 ``Buddy`` per extension). pjsua sends the
  SUBSCRIBE (with the account's route, Contact and credentials), answers 401/407, refreshes
  before expiry and answers each NOTIFY. ``presence``: ``BuddyConfig.subscribe``.
  ``dialog``: pjsua2 has no call for it, so ``pjsua_buddy_subscribe_dlg_event`` through
  ctypes on the buddy's id (the wheel exports it; pjsua initialises the package).
- The bodies are read by :mod:`.notify_observer` once pjsua accepted the NOTIFY, and turned
  into a state by :mod:`.presence_body` (every dialog of a dialog-info document, RPID
  activities of a PIDF). Without that module (no rdata layout), pjsua's own reading is used:
  the first dialog only, and pjsua's PIDF status.
- Subscription state: pjsua2 calls ``onBuddyEvSubState`` for presence buddies; for dialog
  buddies it calls nothing (pjsua's ``on_buddy_dlg_event_state`` is not wrapped), so their
  state is read every :data:`POLL_S` with ``pjsua_buddy_get_dlg_event_info`` (layout checked
  on the first read).
- Re-subscription is ours: a failed or ended subscription's buddy is deleted (never inside a
  pjsua callback) and a new one made after a back-off of 2 s doubling to 5 min, reset by the
  next accepted NOTIFY. pjsua's own re-subscription is thereby never used: for a dialog
  buddy it would subscribe to ``presence`` (its timer calls ``pjsua_buddy_update_pres``).
- pjsua picks the account of a subscription by the buddy URI's domain
  (``pjsua_acc_find_for_outgoing``), not from ``Buddy.create``: when another link of this
  worker shares the PBX domain and would be picked, the company's extensions are not
  subscribed (an ERROR says why) rather than subscribed with the wrong identity.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pjsua2 as pj

from . import ipc
from .calls import request_uri
from .config import LinkConfig
from .links import LinkAccount, Links
from .pjlib import pj_reason, pjsua_lib
from .presence_body import (
    DIALOG_INFO_TYPE,
    PIDF_TYPE,
    BadBody,
    DialogTracker,
    ExtState,
    pidf_state,
)
from .routing import LINK_PARAM
from .sipmsg import Request, parse_name_addr, parse_request

log = logging.getLogger(__name__)

POLL_S = 0.2
#: pjsua holds at most 256 buddies (PJSUA_MAX_BUDDIES); SIP MESSAGEs borrow one each while
#: they are sent, so the watches of one worker stay below that
MAX_WATCHES = 200
BACKOFF_FIRST_S = 2.0
BACKOFF_MAX_S = 300.0
_BUSY_DIALOG_STATES = frozenset({"trying", "proceeding", "early", "confirmed"})
_SUB_STATE_NAMES = frozenset({b"NULL", b"SENT", b"ACCEPTED", b"PENDING", b"ACTIVE",
                              b"TERMINATED", b"UNKNOWN"})


class _PjStr(ctypes.Structure):
    """``pj_str_t`` (not NUL-terminated: read ``slen`` bytes)."""

    _fields_ = [("ptr", ctypes.c_void_p), ("slen", ctypes.c_ssize_t)]

    def text(self) -> str:
        if not self.ptr or self.slen <= 0:
            return ""
        return ctypes.string_at(self.ptr, min(self.slen, 4096)).decode("utf-8", "replace")


class _DlgEventInfo(ctypes.Structure):
    """``pjsua_buddy_dlg_event_info`` of pjsua 2.15 (buffer 1024), with room to spare."""

    _fields_ = [("id", ctypes.c_int), ("uri", _PjStr), ("dialog_id", _PjStr),
                ("dialog_info_state", _PjStr), ("dialog_info_entity", _PjStr),
                ("dialog_call_id", _PjStr), ("dialog_remote_tag", _PjStr),
                ("dialog_local_tag", _PjStr), ("dialog_direction", _PjStr),
                ("dialog_state", _PjStr), ("dialog_duration", _PjStr),
                ("local_identity", _PjStr), ("local_identity_display", _PjStr),
                ("local_target_uri", _PjStr), ("remote_identity", _PjStr),
                ("remote_identity_display", _PjStr), ("remote_target_uri", _PjStr),
                ("sub_state", ctypes.c_int), ("sub_state_name", ctypes.c_char_p),
                ("sub_term_code", ctypes.c_uint), ("sub_term_reason", _PjStr),
                ("buf_", ctypes.c_char * 1024), ("_spare", ctypes.c_char * 4096)]


@dataclass(frozen=True)
class _SubState:
    state: int
    code: int
    reason: str
    #: the state pjsua's own reading of the last NOTIFY gives (fallback), "" when none
    body_state: str = ""


class ExtensionBuddy(pj.Buddy):
    """One extension's subscription; callbacks are O(1) and never raise."""

    def __init__(self, key: tuple[str, str], sink: PresenceWatcher) -> None:
        super().__init__()
        self.key = key
        self._sink = weakref.ref(sink)

    def _changed(self) -> None:
        sink = self._sink()
        if sink is None:
            return
        try:
            sink.changed(self.key)
        except Exception:
            log.exception("buddy callback failed for %s", self.key)

    def onBuddyState(self) -> None:
        self._changed()

    def onBuddyEvSubState(self, prm: pj.OnBuddyEvSubStateParam) -> None:
        self._changed()


@dataclass
class _Watch:
    company: str
    extension: str
    package: str
    uri: str
    buddy: ExtensionBuddy | None = None
    #: what was last reported ("" before the first report)
    state: str = ""
    failures: int = 0
    timer: int = 0
    tracker: DialogTracker = field(default_factory=DialogTracker)


class PresenceWatcher:
    """The extension subscriptions of this worker's home companies."""

    def __init__(
        self,
        links: Links,
        emit: Callable[[Any], None],
        schedule: Callable[[float, Callable[[], None]], int],
        cancel: Callable[[int], None],
    ) -> None:
        self._links = links
        self._emit = emit
        self._schedule = schedule
        self._cancel = cancel
        self._watches: dict[tuple[str, str], _Watch] = {}
        self._poll_timer = 0
        self._info = _DlgEventInfo()
        self._layout_ok: bool | None = None
        self._lib: ctypes.CDLL | None = None
        self.stopping = False
        #: bodies come from :mod:`.notify_observer` (else pjsua's own reading is used)
        self.observed = False

    # ------------------------------------------------------------ links
    def watch(self, link: LinkConfig) -> None:
        """Subscribe to each of ``link.extensions`` (after dropping the company's old ones)."""
        self.unwatch(link.company)
        if link.presence == "off" or not link.extensions or self.stopping:
            return
        acc = self._links.get(link.company)
        if acc is None:
            return
        if not self._account_is_chosen(link, acc):
            return
        room = MAX_WATCHES - len(self._watches)
        if len(link.extensions) > room:
            log.error("presence %s: only %d of its %d extensions are watched (a worker watches "
                      "at most %d; spread the companies over more workers)", link.company,
                      max(room, 0), len(link.extensions), MAX_WATCHES)
        for ext in link.extensions[:max(room, 0)]:
            w = _Watch(link.company, ext, link.presence, request_uri(link, ext))
            self._watches[(link.company, ext)] = w
            self._subscribe(w)
        log.info("presence %s: watching %d extension(s) (%s event package)", link.company,
                 min(len(link.extensions), max(room, 0)), link.presence)
        self._ensure_poll()

    def unwatch(self, company: str) -> None:
        for key in [k for k in self._watches if k[0] == company]:
            w = self._watches.pop(key)
            self._drop(w)

    def shutdown(self) -> None:
        """Unsubscribe everything (SUBSCRIBE with Expires 0); before the accounts go."""
        self.stopping = True
        if self._poll_timer:
            self._cancel(self._poll_timer)
            self._poll_timer = 0
        while self._watches:
            _key, w = self._watches.popitem()
            self._drop(w)

    def _drop(self, w: _Watch) -> None:
        if w.timer:
            self._cancel(w.timer)
            w.timer = 0
        buddy, w.buddy = w.buddy, None
        # pjsua2's destructor: pjsua_buddy_del, which unsubscribes (Expires: 0) in this thread
        del buddy

    # ------------------------------------------------------------ subscribing
    def _c(self) -> ctypes.CDLL:
        if self._lib is None:
            lib = pjsua_lib()
            lib.pjsua_buddy_subscribe_dlg_event.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.pjsua_buddy_get_dlg_event_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
            lib.pjsua_acc_find_for_outgoing.argtypes = [ctypes.c_void_p]
            self._lib = lib
        return self._lib

    def _account_is_chosen(self, link: LinkConfig, acc: LinkAccount) -> bool:
        uri = request_uri(link, link.extensions[0]).encode()
        text = ctypes.create_string_buffer(uri)
        pj_uri = _PjStr(ctypes.cast(text, ctypes.c_void_p), len(uri))
        chosen = self._c().pjsua_acc_find_for_outgoing(ctypes.byref(pj_uri))
        if chosen == acc.getId():
            return True
        other = next((c for c, a in self._links.accounts.items() if a.getId() == chosen), "?")
        log.error("presence %s: not subscribing: pjsua would send the SUBSCRIBEs from the "
                  "account of %s, which uses the same PBX domain (%s); give the links "
                  "different domains or registrar ports", link.company, other, link.domain)
        return False

    def _subscribe(self, w: _Watch) -> None:
        w.timer = 0
        if self.stopping or self._watches.get((w.company, w.extension)) is not w:
            return
        acc = self._links.get(w.company)
        if acc is None:
            return
        w.tracker = DialogTracker()
        buddy = ExtensionBuddy((w.company, w.extension), self)
        cfg = pj.BuddyConfig()
        cfg.uri = w.uri
        cfg.subscribe = w.package == "presence"
        try:
            buddy.create(acc, cfg)
            if w.package == "dialog":
                status = self._c().pjsua_buddy_subscribe_dlg_event(buddy.getId(), 1)
                if status != 0:
                    raise RuntimeError(f"pjsua_buddy_subscribe_dlg_event: pj status {status}")
        except Exception as e:
            log.warning("presence %s/%s: cannot subscribe to %s: %s", w.company, w.extension,
                        w.uri, pj_reason(e))
            del buddy
            self._failed(w, 0, pj_reason(e))
            return
        w.buddy = buddy
        log.debug("presence %s/%s: SUBSCRIBE %s (%s)", w.company, w.extension, w.uri, w.package)

    def _failed(self, w: _Watch, code: int, reason: str) -> None:
        """The subscription failed or ended: offline, new buddy after a back-off."""
        buddy, w.buddy = w.buddy, None
        if buddy is not None:
            del buddy
        w.failures += 1
        delay = min(BACKOFF_FIRST_S * 2 ** (w.failures - 1), BACKOFF_MAX_S)
        # 200: ended by the PBX's NOTIFY, whose reason (noresource, deactivated …) says why
        why = reason if code in (0, 200) else f"{code} {reason}".strip()
        log.info("presence %s/%s: subscription ended (%s); again in %.0f s", w.company,
                 w.extension, why or "no reason", delay)
        self._report(w, "offline", why)
        if not self.stopping:
            w.timer = self._schedule(delay, partial(self._subscribe, w))

    # ------------------------------------------------------------ subscription state
    def changed(self, key: tuple[str, str]) -> None:
        """A pjsua2 callback (inside pjsua): look at the buddy on the next loop turn."""
        self._schedule(0.0, partial(self._check_key, key))

    def _check_key(self, key: tuple[str, str]) -> None:
        w = self._watches.get(key)
        if w is not None:
            self._check(w)

    def _ensure_poll(self) -> None:
        if not self._poll_timer and not self.stopping and self._watches:
            self._poll_timer = self._schedule(POLL_S, self._poll)

    def _poll(self) -> None:
        self._poll_timer = 0
        for w in list(self._watches.values()):
            if w.package == "dialog" or not self.observed:
                self._check(w)
        self._ensure_poll()

    def _check(self, w: _Watch) -> None:
        if w.buddy is None or self.stopping:
            return
        sub = self._dialog_state(w) if w.package == "dialog" else self._presence_state(w)
        if sub is None:
            return
        if sub.state in (pj.PJSIP_EVSUB_STATE_NULL, pj.PJSIP_EVSUB_STATE_TERMINATED):
            self._failed(w, sub.code, sub.reason)
            return
        if not self.observed and sub.body_state:
            self._report(w, sub.body_state)  # type: ignore[arg-type]

    def _dialog_state(self, w: _Watch) -> _SubState | None:
        assert w.buddy is not None
        info = self._info
        status = self._c().pjsua_buddy_get_dlg_event_info(w.buddy.getId(), ctypes.byref(info))
        if status != 0:
            return None
        if self._layout_ok is None:
            self._layout_ok = (info.id == w.buddy.getId() and info.uri.text() == w.uri
                               and info.sub_state_name in _SUB_STATE_NAMES)
            if not self._layout_ok:
                log.error("pjsua_buddy_dlg_event_info layout not as expected: the state of "
                          "dialog subscriptions cannot be read")
        if not self._layout_ok:
            return None
        body = ""
        if info.dialog_info_state.text():
            body = "busy" if info.dialog_state.text().lower() in _BUSY_DIALOG_STATES \
                else "online"
        return _SubState(info.sub_state, info.sub_term_code, info.sub_term_reason.text(), body)

    def _presence_state(self, w: _Watch) -> _SubState | None:
        assert w.buddy is not None
        try:
            info = w.buddy.getInfo()
        except Exception:
            return None
        body = ""
        pres = info.presStatus
        if int(info.subState) == pj.PJSIP_EVSUB_STATE_ACTIVE:
            if int(pres.activity) == pj.PJRPID_ACTIVITY_BUSY:
                body = "busy"
            elif int(pres.status) == pj.PJSUA_BUDDY_STATUS_ONLINE:
                body = "online"
            elif int(pres.status) == pj.PJSUA_BUDDY_STATUS_OFFLINE:
                body = "offline"
        return _SubState(int(info.subState), int(info.subTermCode), str(info.subTermReason),
                         body)

    # ------------------------------------------------------------ NOTIFY bodies
    def notify_accepted(self, text: str, source: str) -> None:
        """A NOTIFY pjsua answered with 2xx (from :mod:`.notify_observer`)."""
        req = parse_request(text)
        if req is None:
            return
        package = (req.header("event") or "").split(";", 1)[0].strip().lower()
        w = self._watch_for(req, package)
        if w is None:
            return
        sub_state = (req.header("subscription-state") or "").split(";", 1)[0].strip().lower()
        if sub_state == "terminated":
            self.changed((w.company, w.extension))
            return
        body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
        if not body.strip():
            return  # pending subscriptions may NOTIFY without a body
        ctype = (req.header("content-type") or "").split(";", 1)[0].strip().lower()
        try:
            if package == "dialog" and ctype == DIALOG_INFO_TYPE:
                state: ExtState = w.tracker.update(body)
            elif package == "presence" and ctype == PIDF_TYPE:
                state = pidf_state(body)
            else:
                log.debug("presence %s/%s: NOTIFY with %s ignored", w.company, w.extension,
                          ctype or "no content type")
                return
        except BadBody as e:
            log.warning("presence %s/%s: unreadable NOTIFY from %s: %s", w.company,
                        w.extension, source, e)
            return
        w.failures = 0
        self._report(w, state)

    def _watch_for(self, req: Request, package: str) -> _Watch | None:
        ext = parse_name_addr(req.header("from") or "").uri.user
        company = req.uri.params.get(LINK_PARAM, "")
        if company:
            w = self._watches.get((company, ext))
            return w if w is not None and w.package == package else None
        matches = [w for w in self._watches.values()
                   if w.extension == ext and w.package == package]
        return matches[0] if len(matches) == 1 else None

    # ------------------------------------------------------------ reports
    def _report(self, w: _Watch, state: ExtState, reason: str = "") -> None:
        if state == w.state:
            return
        w.state = state
        log.info("presence %s/%s: %s%s", w.company, w.extension, state,
                 f" ({reason})" if reason else "")
        self._emit(ipc.ExtensionState(company=w.company, extension=w.extension, state=state,
                                      reason=reason))
