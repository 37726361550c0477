"""SIP MESSAGE (RFC 3428) out of dialog, both ways (owner thread).

Sending goes through a short-lived pjsua2 ``Buddy`` (pjsua2 sends out-of-dialog MESSAGE only
from a buddy; it retries a 401/407 with the account's credentials). The request id travels as
the message's ``userData`` token (the address of a small object kept until the outcome), and
``onInstantMessageStatus`` reports the final status and reason as ``ipc.MessageOutcome``.
Received messages are reported as ``ipc.IncomingMessage`` for the company the routing rules
give. With the source filter installed, an admitted MESSAGE is taken over before pjsua sees it
(:mod:`.uas_tsx`) and its ``key`` is answered with the controller's verdict; without it pjsua
has already answered 200 (a source no link admits got 403 from the source filter).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pjsua2 as pj

from . import ipc
from .calls import from_uri, request_uri
from .errors import InvalidTarget, MessageTooLarge, PjsipFailure
from .links import LinkAccount
from .pjlib import pj_reason
from .sipmsg import check_user, parse_name_addr, parse_request

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; charset=UTF-8"


class Messenger:
    def __init__(self, max_bytes: int, emit: Callable[[Any], None]) -> None:
        self._max_bytes = max_bytes
        self._emit = emit
        self._pending: dict[int, tuple[int, pj.ByteVector]] = {}

    def send(self, cmd: ipc.SendMessage, acc: LinkAccount) -> None:
        size = len(cmd.text.encode("utf-8"))
        if size > self._max_bytes:
            raise MessageTooLarge(
                f"message is {size} bytes; the limit is {self._max_bytes} bytes"
            )
        if not cmd.text:
            raise InvalidTarget("message is empty")
        link = acc.link
        check_user(cmd.from_user, "from user")
        dest = request_uri(link, cmd.target)
        token = pj.ByteVector()
        key = int(token.this)
        prm = pj.SendInstantMessageParam()
        prm.content = cmd.text
        prm.contentType = CONTENT_TYPE
        prm.txOption.localUri = from_uri(link, cmd.from_user, cmd.from_display)
        prm.userData = token.this
        buddy = pj.Buddy()
        bcfg = pj.BuddyConfig()
        bcfg.uri = dest
        bcfg.subscribe = False
        self._pending[key] = (cmd.req, token)
        try:
            buddy.create(acc, bcfg)
            buddy.sendInstantMessage(prm)
        except Exception as e:
            self._pending.pop(key, None)
            raise PjsipFailure(f"MESSAGE to {dest} failed: {pj_reason(e)}") from None
        finally:
            del buddy
        log.info("message req %d: MESSAGE %s for %s from %s (%d bytes)", cmd.req, dest,
                 link.company, cmd.from_user, size)

    def on_status(self, prm: pj.OnInstantMessageStatusParam) -> None:
        token = prm.userData
        key = int(token) if token is not None else 0
        entry = self._pending.pop(key, None)
        if entry is None:
            return
        req = entry[0]
        code, reason = int(prm.code), str(prm.reason)
        log.info("message req %d: %d %s", req, code, reason)
        self._emit(ipc.MessageOutcome(req=req, status=code, reason=reason))

    def on_incoming(self, company: str, prm: pj.OnInstantMessageParam, source: str) -> None:
        self._report(company, str(prm.fromUri), str(prm.toUri), str(prm.contentType),
                     str(prm.msgBody), source)

    def on_taken(self, key: int, company: str, text: str, source: str) -> None:
        """A MESSAGE the source filter took over (answered by key once the controller has
        delivered it): the same report, from the raw request."""
        req = parse_request(text)
        if req is None:
            self._emit(ipc.IncomingMessage(company=company, from_user="", from_display="",
                                           from_uri="", to_user="", content_type="",
                                           text="", source=source, key=key))
            return
        body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
        self._report(company, req.header("from") or "", req.header("to") or "",
                     req.header("content-type") or "text/plain", body, source, key)

    def _report(self, company: str, from_header: str, to_header: str, content_type: str,
                text: str, source: str, key: int = 0) -> None:
        frm = parse_name_addr(from_header)
        to = parse_name_addr(to_header)
        label = f"message {key}" if key else "message"
        log.info("%s from %s for %s (%s, %d bytes) via %s", label, frm.uri, company,
                 content_type, len(text.encode("utf-8", "replace")), source)
        self._emit(ipc.IncomingMessage(
            company=company, from_user=frm.uri.user, from_display=frm.display,
            from_uri=str(frm.uri), to_user=to.uri.user, content_type=content_type,
            text=text, source=source, key=key,
        ))

    def clear(self) -> None:
        for req, _token in self._pending.values():
            self._emit(ipc.MessageOutcome(req=req, status=503, reason="worker stopping"))
        self._pending.clear()
