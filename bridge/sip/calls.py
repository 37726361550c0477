"""Calls of one worker (owner thread): pjsua2 Call objects, their states, limits, DTMF, hold
and transfer.

Lifetime (DESIGN §3a): the table holds a strong reference to each :class:`BridgeCall` until
pjsua2 reports DISCONNECTED and drops it inside that callback; calls refer back to the table
and their account only weakly (no reference cycle through a pjsua2 object). Each bridge call
id owns an audio slot from :class:`~.audio.AudioPool` from creation to its end; a worker takes
no more calls than it has slots (``max_calls`` ≤ 4). Every state change is one log line with
both call ids.

A bridge call id may be carried by more than one pjsua2 call over its life (transfer from the
PBX side). Its *legs*:

* ``main``: the SIP call whose audio the slot carries (``_calls``);
* ``transfer``: the INVITE we place after a REFER (blind transfer) with the same call id and
  slot (``_pending``). When it is answered its audio takes the slot, it becomes ``main``, the
  old call is hung up and the controller gets ``CallTransferred``. If it fails, the old call
  goes on as if nothing happened (or, when the PBX already hung the old call up, the call
  ends with the transfer's status);
* ``replacing``: an INVITE with ``Replaces`` for one of our calls (attended transfer): pjsua
  answers it and ends the old dialog itself; it becomes ``main`` at once;
* ``retired``: a replaced call, kept (``_retired``) only until its DISCONNECTED; its end is
  not reported.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import pjsua2 as pj

from . import ipc
from .audio import AudioPool
from .config import LinkConfig
from .errors import CallStateError, CapacityExceeded, InvalidTarget, NoSuchCall, PjsipFailure
from .links import LinkAccount, next_hop, with_transport
from .pjlib import pj_reason, pjsua_call_count, pjsua_call_dumps
from .sipmsg import check_user, parse_name_addr, parse_request, quote_display, split_source

Schedule = Callable[[float, Callable[[], None]], int]

log = logging.getLogger(__name__)

_DTMF_RE = re.compile(r"[0-9A-Da-d*#]+")
_DTMF_METHODS = {
    pj.PJSUA_DTMF_METHOD_RFC2833: "rfc4733",
    pj.PJSUA_DTMF_METHOD_SIP_INFO: "info",
}

Direction = Literal["outbound", "inbound"]
Role = Literal["main", "transfer", "replacing", "retired"]

_PJ_EINVALIDOP = 70013  # PJ_ERRNO_START_STATUS + 13 (pjsua2 does not export it)
_LOCAL_HOLD = pj.PJSUA_CALL_MEDIA_LOCAL_HOLD
_REMOTE_HOLD = pj.PJSUA_CALL_MEDIA_REMOTE_HOLD


def request_uri(link: LinkConfig, target: str) -> str:
    if target.startswith(("sip:", "sips:")):
        return target
    host, _proxies = next_hop(link)
    return with_transport(f"sip:{check_user(target, 'target')}@{host}", link.transport)


def from_uri(link: LinkConfig, user: str, display: str) -> str:
    uri = f"<sip:{check_user(user, 'from user')}@{link.domain}>"
    return f"{quote_display(display)} {uri}" if display else uri


class BridgeCall(pj.Call):
    """A pjsua2 call; callbacks forward to the table and never raise."""

    def __init__(
        self,
        acc: LinkAccount,
        pj_call_id: int,
        *,
        call_id: str,
        company: str,
        direction: Direction,
        slot: int,
        table: CallTable,
    ) -> None:
        super().__init__(acc, pj_call_id)
        self.call_id = call_id
        self.company = company
        self.direction = direction
        self.slot = slot
        self.role: Role = "main"
        self.sip_call_id = ""
        self.answered = False
        self.ended = False
        self.local_end = False
        self.progress = 0
        self.early_media = False
        #: hold as the media state last showed it (our sendonly; the PBX's sendonly/inactive)
        self.local_hold = False
        self.remote_hold = False
        #: hold the controller asked for (None: never asked); re-sent when a re-INVITE clashed
        self.want_hold: bool | None = None
        #: who this leg talks to, for ``CallTransferred`` (transfer and replacing legs)
        self.party = ""
        self._table = weakref.ref(table)
        self._acc = weakref.ref(acc)

    @property
    def account(self) -> LinkAccount | None:
        return self._acc()

    def _forward(self, name: str, *args: Any) -> None:
        table = self._table()
        if table is None:
            return
        try:
            getattr(table, name)(self, *args)
        except Exception:
            log.exception("call %s: %s failed", self.call_id, name)

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        self._forward("on_state")

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        self._forward("on_media")

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        try:
            digit, method = str(prm.digit), int(prm.method)
        except Exception:
            return
        self._forward("on_dtmf", digit, method)

    def onCallTransferRequest(self, prm: pj.OnCallTransferRequestParam) -> None:
        """REFER within this call. pjsua answers 202 and places the INVITE when the status
        stays 2xx; ``prm.newCall`` must then be a Call we keep (else pjsua2 reuses this one).
        Any failure in here declines the REFER (603)."""
        try:
            prm.statusCode = 603
        except Exception:
            return
        self._forward("on_transfer_request", prm)

    def onCallReplaceRequest(self, prm: pj.OnCallReplaceRequestParam) -> None:
        self._forward("on_replace_request", prm)

    def onCallReplaced(self, prm: pj.OnCallReplacedParam) -> None:
        self._forward("on_replaced", prm)


@dataclass(frozen=True)
class IncomingInfo:
    caller_user: str
    caller_display: str
    caller_uri: str
    asserted_identity: str
    target: str
    to_user: str
    source: str
    sip_call_id: str
    #: the ``Replaces`` header of an INVITE that replaces one of our calls ("" otherwise)
    replaces: str = ""


def party_of(value: str) -> str:
    """``"Name" <sip:u@h>`` or ``sip:u@h`` (no parameters or headers) from a name-addr."""
    try:
        na = parse_name_addr(value)
    except Exception:
        return value.strip()
    uri = str(na.uri) if na.uri.scheme else value.strip().strip("<>")
    return f"{na.display} <{uri}>" if na.display else uri


def incoming_info(whole_msg: str, source: str) -> IncomingInfo:
    req = parse_request(whole_msg)
    if req is None:
        return IncomingInfo("", "", "", "", "", "", source, "")
    frm = parse_name_addr(req.header("from") or "")
    to = parse_name_addr(req.header("to") or "")
    pai_value = req.header("p-asserted-identity")
    pai = str(parse_name_addr(pai_value).uri) if pai_value else ""
    return IncomingInfo(
        caller_user=frm.uri.user,
        caller_display=frm.display,
        caller_uri=str(frm.uri),
        asserted_identity=pai,
        target=req.uri.user,
        to_user=to.uri.user,
        source=source,
        sip_call_id=req.header("call-id") or "",
        replaces=req.header("replaces") or "",
    )


class CallTable:
    """All calls of this worker, keyed by the bridge's call id (owner thread only)."""

    def __init__(self, audio: AudioPool, emit: Callable[[Any], None], worker_index: int) -> None:
        self._audio = audio
        self._emit = emit
        #: call id → its main leg
        self._calls: dict[str, BridgeCall] = {}
        #: call id → the INVITE placed for a REFER, until it is answered or fails
        self._pending: dict[str, BridgeCall] = {}
        #: pjsua call id → an INVITE with Replaces, until pjsua reports what it replaces
        self._replacing: dict[int, BridgeCall] = {}
        #: legs whose audio moved to another leg, until their DISCONNECTED
        self._retired: list[BridgeCall] = []
        #: transfer legs pjsua never placed (kept: pjsua2's parent call points at them)
        self._stale: list[BridgeCall] = []
        #: call id → audio slot; read by the asyncio thread (plain dict reads are safe).
        self.slots: dict[str, int] = {}
        #: the owner thread's timer (the worker sets it); without one, deferred work runs
        #: at once.
        self.schedule: Schedule | None = None
        self._ids = itertools.count(1)
        self._prefix = f"w{worker_index}-{os.getpid()}"

    def __len__(self) -> int:
        return (len(self._calls) + len(self._pending) + len(self._replacing)
                + len(self._retired))

    def _legs(self) -> list[BridgeCall]:
        return [*self._calls.values(), *self._pending.values(), *self._replacing.values(),
                *self._retired]

    @property
    def full(self) -> bool:
        """No free audio slot, or pjsua holds as many calls as it can (ended ones included)."""
        if self._audio.free == 0:
            return True
        held, most = pjsua_call_count()
        return 0 < most <= held  # most is 0 before pjsua is initialised

    def _check_pjsua_room(self) -> None:
        held, most = pjsua_call_count()
        if 0 < most <= held:
            log.warning("pjsua holds %d of %d calls (%d of them live here): ended calls wait "
                        "for their BYE or INVITE transaction to finish; no new call now",
                        held, most, len(self))
            ours = set()
            for call in self._legs():
                with contextlib.suppress(Exception):
                    ours.add(call.getId())
            for dump in pjsua_call_dumps(skip=ours):
                log.warning("pjsua holds a call the worker has let go: %s", dump)
            raise CapacityExceeded(f"pjsua still holds {held} of {most} calls")

    def _get(self, call_id: str) -> BridgeCall:
        call = self._calls.get(call_id)
        if call is None or call.ended:
            raise NoSuchCall(f"no call {call_id} on this worker")
        return call

    def _add(self, call: BridgeCall) -> None:
        self._calls[call.call_id] = call
        self.slots[call.call_id] = call.slot

    def _drop_leg(self, call: BridgeCall) -> None:
        """Forget one pjsua2 call (its DISCONNECTED): the last strong reference goes."""
        cid = call.call_id
        if self._calls.get(cid) is call:
            del self._calls[cid]
        if self._pending.get(cid) is call:
            del self._pending[cid]
        for key, leg in list(self._replacing.items()):
            if leg is call:
                del self._replacing[key]
        self._retired = [leg for leg in self._retired if leg is not call]

    def _release(self, call_id: str) -> int | None:
        slot = self.slots.pop(call_id, None)
        if slot is not None:
            self._audio.release(slot)
            self._stale = [leg for leg in self._stale if leg.call_id != call_id]
        return slot

    def _forget(self, call: BridgeCall) -> None:
        self._drop_leg(call)
        self._release(call.call_id)

    def _defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the next owner loop turn (outside the current pjsua2 callback)."""
        if self.schedule is not None:
            self.schedule(0.0, fn)
        else:
            fn()

    # -- outbound
    def make_call(self, cmd: ipc.MakeCall, acc: LinkAccount) -> str:
        link = acc.link
        dest = request_uri(link, cmd.target)
        local = from_uri(link, cmd.from_user, cmd.from_display)
        if cmd.call in self._calls or cmd.call in self.slots:
            raise CallStateError(f"call id {cmd.call} is already in use")
        self._check_pjsua_room()
        slot = self._audio.acquire()
        if slot is None:
            raise CapacityExceeded(f"worker has no free call slot ({len(self)} calls)")
        call = BridgeCall(acc, pj.PJSUA_INVALID_ID, call_id=cmd.call, company=link.company,
                          direction="outbound", slot=slot, table=self)
        self._add(call)
        prm = pj.CallOpParam(True)
        prm.opt.audioCount = 1
        prm.opt.videoCount = 0
        prm.txOption.localUri = local
        try:
            call.makeCall(dest, prm)
        except Exception as e:
            call.ended = True
            self._forget(call)
            reason = pj_reason(e)
            if "PJ_ETOOMANY" in reason:  # pjsua full after all (see _check_pjsua_room)
                raise CapacityExceeded(f"pjsua has no free call ({reason})") from None
            raise PjsipFailure(f"INVITE to {dest} failed: {reason}") from None
        try:
            call.sip_call_id = str(call.getInfo().callIdString)
        except Exception:
            call.sip_call_id = ""
        log.info("call %s (sip %s): INVITE %s for %s from %s", call.call_id, call.sip_call_id,
                 dest, link.company, cmd.from_user)
        return call.sip_call_id

    # -- inbound
    def incoming(self, acc: LinkAccount, prm: pj.OnIncomingCallParam, company: str | None,
                 info: IncomingInfo,
                 refusal: tuple[int, Sequence[tuple[str, str]]] | None = None) -> None:
        """``company`` None: 403. ``refusal``: the (status, headers) to answer with instead
        (401 with a digest challenge, 403 for wrong credentials)."""
        if refusal is None and company is None:
            refusal = (403, ())
        if info.replaces and refusal is None and company:
            self._incoming_replaces(acc, prm, company, info)
            return
        slot = self._audio.acquire() if refusal is None else None
        call_id = f"{self._prefix}-{next(self._ids)}"
        call = BridgeCall(acc, int(prm.callId), call_id=call_id, company=company or "",
                          direction="inbound", slot=slot if slot is not None else -1, table=self)
        call.sip_call_id = info.sip_call_id
        self._calls[call_id] = call  # strong reference until DISCONNECTED, whatever happens
        if refusal is not None or slot is None or company is None:
            status, headers = refusal or (503, ())
            call.local_end = True
            log.info("call %s (sip %s): inbound from %s to %s rejected %d", call_id,
                     info.sip_call_id, info.source, info.target, status)
            self._answer(call, status, headers=headers)
            return
        self.slots[call_id] = slot
        log.info("call %s (sip %s): inbound for %s from %s <%s> to %s via %s", call_id,
                 info.sip_call_id, company, info.caller_display, info.caller_uri, info.target,
                 info.source)
        self._emit(ipc.IncomingCall(
            call=call_id, company=company, caller_user=info.caller_user,
            caller_display=info.caller_display, caller_uri=info.caller_uri,
            asserted_identity=info.asserted_identity, target=info.target,
            to_user=info.to_user, source=info.source, sip_call_id=info.sip_call_id,
        ))

    def _incoming_replaces(self, acc: LinkAccount, prm: pj.OnIncomingCallParam, company: str,
                           info: IncomingInfo) -> None:
        """An INVITE with Replaces (attended transfer). pjsua2 may report it as an incoming
        call before ``onCallReplaced``; it is no new call for the controller: keep the Call
        (pjsua answers it) until pjsua says which call it replaces."""
        pj_id = int(prm.callId)
        call = BridgeCall(acc, pj_id, call_id=f"{self._prefix}-r{next(self._ids)}",
                          company=company, direction="inbound", slot=-1, table=self)
        call.role = "replacing"
        call.sip_call_id = info.sip_call_id
        call.party = party_of(f"{quote_display(info.caller_display)} <{info.caller_uri}>"
                              if info.caller_display else info.caller_uri)
        self._replacing[pj_id] = call
        log.info("call (sip %s): INVITE from %s replaces %s", info.sip_call_id, call.party,
                 info.replaces)

    def _answer(self, call: BridgeCall, status: int, reason: str = "",
                headers: Sequence[tuple[str, str]] = ()) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = status
        if reason:
            prm.reason = reason
        for name, value in headers:
            hdr = pj.SipHeader()
            hdr.hName = name
            hdr.hValue = value
            prm.txOption.headers.append(hdr)
        if status >= 300 and not headers:
            call.hangup(prm)
        else:
            # a final refusal with headers (401 + WWW-Authenticate) goes through answer():
            # inside onIncomingCall pjsua defers a hangup and sends it without our headers,
            # while a deferred answer keeps them
            call.answer(prm)

    def ring(self, call_id: str) -> None:
        call = self._get(call_id)
        if call.direction != "inbound" or call.answered:
            raise CallStateError(f"call {call_id} is not an unanswered inbound call")
        self._op(call, 180)

    def answer(self, call_id: str) -> None:
        call = self._get(call_id)
        if call.direction != "inbound" or call.answered:
            raise CallStateError(f"call {call_id} is not an unanswered inbound call")
        self._op(call, 200)

    def reject(self, call_id: str, status: int, reason: str) -> None:
        call = self._get(call_id)
        if call.direction != "inbound" or call.answered:
            raise CallStateError(f"call {call_id} is not an unanswered inbound call")
        if not 300 <= status <= 699:
            raise CallStateError(f"reject status must be 300-699, not {status}")
        call.local_end = True
        self._op(call, status, reason)

    def hangup(self, call_id: str) -> None:
        """The main leg and a transfer in progress, if any."""
        legs = [leg for leg in (self._calls.get(call_id), self._pending.get(call_id))
                if leg is not None and not leg.ended]
        if not legs:
            raise NoSuchCall(f"no call {call_id} on this worker")
        error = ""
        for leg in legs:
            leg.local_end = True
            try:
                leg.hangup(pj.CallOpParam())
            except Exception as e:
                error = pj_reason(e)
        if error:
            raise PjsipFailure(f"hangup of {call_id} failed: {error}")

    def _op(self, call: BridgeCall, status: int, reason: str = "") -> None:
        try:
            self._answer(call, status, reason)
        except Exception as e:
            raise PjsipFailure(f"{status} on {call.call_id} failed: {pj_reason(e)}") from None

    def send_dtmf(self, call_id: str, digits: str, method: str) -> str:
        call = self._get(call_id)
        if not _DTMF_RE.fullmatch(digits):
            raise InvalidTarget(f"DTMF digits {digits!r}: only 0-9, A-D, * and #")
        if not call.answered and not call.early_media:
            raise CallStateError(f"call {call_id} has no media yet")
        order = {"rfc4733": ["rfc4733"], "info": ["info"]}.get(method, ["rfc4733", "info"])
        error = ""
        for m in order:
            prm = pj.CallSendDtmfParam()
            prm.digits = digits
            prm.method = (pj.PJSUA_DTMF_METHOD_RFC2833 if m == "rfc4733"
                          else pj.PJSUA_DTMF_METHOD_SIP_INFO)
            try:
                call.sendDtmf(prm)
            except Exception as e:
                error = pj_reason(e)
                continue
            log.info("call %s: sent DTMF %s by %s", call_id, digits, m)
            return m
        raise PjsipFailure(f"DTMF on {call_id} failed: {error}")

    # -- hold (ours: a re-INVITE with a=sendonly; resume: a=sendrecv)
    def set_hold(self, call_id: str, on: bool) -> None:
        call = self._get(call_id)
        if not call.answered:
            raise CallStateError(f"call {call_id} is not answered")
        call.want_hold = on
        if on == call.local_hold:
            return
        self._send_hold(call, on, retry=True)

    def _send_hold(self, call: BridgeCall, on: bool, *, retry: bool) -> None:
        prm = pj.CallOpParam(True)
        try:
            if on:
                call.setHold(prm)
            else:
                prm.opt.flag = pj.PJSUA_CALL_UNHOLD
                call.reinvite(prm)
        except Exception as e:
            reason = pj_reason(e)
            if retry and self._reinvite_pending(e):
                # the last re-INVITE's media update sends this one (see on_media)
                log.info("call %s: %s waits for the re-INVITE in progress", call.call_id,
                         "hold" if on else "resume")
                return
            raise PjsipFailure(f"{'hold' if on else 'resume'} of {call.call_id} failed: "
                               f"{reason}") from None
        log.info("call %s (sip %s): %s (re-INVITE a=%s)", call.call_id, call.sip_call_id,
                 "holding" if on else "resuming", "sendonly" if on else "sendrecv")

    @staticmethod
    def _reinvite_pending(e: BaseException) -> bool:
        """pjsua refuses a re-INVITE with PJ_EINVALIDOP while an offer/answer is under way
        (ours or the PBX's)."""
        return getattr(e, "status", None) == _PJ_EINVALIDOP

    def hangup_all(self) -> int:
        n = 0
        for call in self._legs():
            if call.ended:
                continue
            call.local_end = True
            try:
                call.hangup(pj.CallOpParam())
                n += 1
            except Exception as e:
                log.warning("call %s: hangup failed: %s", call.call_id, pj_reason(e))
        return n

    def clear(self) -> None:
        """Drop every reference (teardown, after pjsua hung everything up)."""
        self._calls.clear()
        self._pending.clear()
        self._replacing.clear()
        self._retired.clear()
        self._stale.clear()
        self.slots.clear()

    # -- callbacks from BridgeCall
    def on_state(self, call: BridgeCall) -> None:
        ci = call.getInfo()
        state = ci.state
        code = int(ci.lastStatusCode)
        reason = str(ci.lastReason)
        if not call.sip_call_id:
            call.sip_call_id = str(ci.callIdString)
        if state == pj.PJSIP_INV_STATE_DISCONNECTED:
            if not call.ended:
                self._on_disconnected(call, code, reason)
            return
        if call.role == "transfer":
            if state == pj.PJSIP_INV_STATE_EARLY and code != call.progress:
                call.progress = code
                log.info("call %s (sip %s): transfer to %s: %d %s", call.call_id,
                         call.sip_call_id, call.party, code, reason)
            elif state == pj.PJSIP_INV_STATE_CONFIRMED:
                self._complete_transfer(call)
            return
        if call.role != "main":
            return
        if state == pj.PJSIP_INV_STATE_EARLY and call.direction == "outbound":
            if code != call.progress:
                call.progress = code
                log.info("call %s (sip %s): %d %s", call.call_id, call.sip_call_id, code, reason)
                self._emit(ipc.CallRinging(call=call.call_id, status=code, reason=reason))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED and not call.answered:
            call.answered = True
            codec = self._codec(call)
            log.info("call %s (sip %s): answered, %s", call.call_id, call.sip_call_id, codec)
            if call.company:
                self._emit(ipc.CallAnswered(call=call.call_id, codec=codec))

    def _on_disconnected(self, call: BridgeCall, code: int, reason: str) -> None:
        call.ended = True
        cid = call.call_id
        by: Literal["local", "remote"] = "local" if call.local_end else "remote"
        self._drop_leg(call)
        if call.role == "retired":
            log.info("call %s (sip %s): replaced leg ended %d %s", cid, call.sip_call_id, code,
                     reason)
            return
        if call.role == "replacing":
            log.info("call (sip %s): replacing INVITE ended %d %s", call.sip_call_id, code,
                     reason)
            return
        if call.role == "transfer":
            log.info("call %s (sip %s): transfer to %s failed: %d %s", cid, call.sip_call_id,
                     call.party, code, reason)
            if cid in self._calls:
                return  # the old call goes on
            log.info("call %s: ended (the transferred leg had already ended)", cid)
        else:
            pending = self._pending.get(cid)
            if pending is not None and not pending.ended:
                log.info("call %s (sip %s): ended %d %s (by %s) while transferring to %s",
                         cid, call.sip_call_id, code, reason, by, pending.party)
                return
            log.info("call %s (sip %s): ended %d %s (by %s)", cid, call.sip_call_id, code,
                     reason, by)
        slot = self._release(cid)
        if call.company and slot is not None and slot >= 0:
            self._emit(ipc.CallEnded(call=cid, status=code, reason=reason, by=by))

    def on_media(self, call: BridgeCall) -> None:
        if call.ended or call.slot < 0 or call.role in ("retired", "replacing"):
            return
        ci = call.getInfo()
        if call.role == "transfer":
            # the new party's audio takes the slot once it answers (not its early media)
            if ci.state >= pj.PJSIP_INV_STATE_CONNECTING:
                self._connect(call, ci)
            return
        for mi in ci.media:
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            local = mi.status == _LOCAL_HOLD
            remote = mi.status == _REMOTE_HOLD or (
                mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE and int(mi.dir) in (
                    pj.PJMEDIA_DIR_DECODING, pj.PJMEDIA_DIR_NONE))
            if mi.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, _REMOTE_HOLD, _LOCAL_HOLD):
                self._connect(call, ci)
                if (call.direction == "outbound" and ci.state == pj.PJSIP_INV_STATE_EARLY
                        and not call.early_media):
                    call.early_media = True
                    code = int(ci.lastStatusCode)
                    log.info("call %s (sip %s): early media (%d)", call.call_id,
                             call.sip_call_id, code)
                    self._emit(ipc.CallEarlyMedia(call=call.call_id, status=code))
            if ci.state != pj.PJSIP_INV_STATE_CONFIRMED and not call.answered:
                return
            self._hold_changed(call, local, remote)
            return

    def _connect(self, call: BridgeCall, ci: pj.CallInfo) -> bool:
        for mi in ci.media:
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if mi.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, _REMOTE_HOLD, _LOCAL_HOLD):
                try:
                    self._audio.connect(call.slot, call.getAudioMedia(mi.index))
                except Exception as e:
                    log.info("call %s: no audio to connect yet: %s", call.call_id,
                             pj_reason(e))
                    return False
                return True
        return False

    def _hold_changed(self, call: BridgeCall, local: bool, remote: bool) -> None:
        if local != call.local_hold:
            call.local_hold = local
            log.info("call %s (sip %s): %s", call.call_id, call.sip_call_id,
                     "on hold (ours)" if local else "resumed (ours)")
            if call.company:
                self._emit(ipc.CallHeld(call=call.call_id, by="local", on=local))
        if remote != call.remote_hold:
            call.remote_hold = remote
            log.info("call %s (sip %s): %s", call.call_id, call.sip_call_id,
                     "held by the PBX" if remote else "resumed by the PBX")
            if call.company:
                self._emit(ipc.CallHeld(call=call.call_id, by="remote", on=remote))
        want = call.want_hold
        if want is not None and want != call.local_hold:
            # a hold/resume asked for while another re-INVITE was in progress
            self._defer(partial(self._retry_hold, call.call_id))

    def _retry_hold(self, call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is None or call.ended or call.want_hold is None:
            return
        if call.want_hold != call.local_hold:
            try:
                self._send_hold(call, call.want_hold, retry=False)
            except PjsipFailure as e:
                log.warning("%s", e)

    # -- transfer from the PBX side
    def on_transfer_request(self, old: BridgeCall, prm: pj.OnCallTransferRequestParam) -> None:
        """REFER (blind transfer): call the Refer-To target on the same link, same slot."""
        cid = old.call_id
        dst = str(prm.dstUri)
        why = ""
        if old.role != "main" or old.ended or self._calls.get(cid) is not old:
            why = "call is not ours"
        elif not old.company or old.slot < 0:
            why = "call was refused"
        elif not old.answered:
            why = "call is not answered"
        elif cid in self._pending:
            why = "a transfer is already in progress"
        acc = old.account
        if not why and acc is None:
            why = "its link is gone"
        if why:
            log.info("call %s (sip %s): REFER to %s declined: %s", cid, old.sip_call_id, dst,
                     why)
            return
        assert acc is not None
        new = BridgeCall(acc, pj.PJSUA_INVALID_ID, call_id=cid, company=old.company,
                         direction="outbound", slot=old.slot, table=self)
        new.role = "transfer"
        new.party = party_of(dst)
        new.want_hold = old.want_hold if old.want_hold else None
        self._pending[cid] = new
        prm.opt.audioCount = 1
        prm.opt.videoCount = 0
        prm.newCall = new
        prm.statusCode = 202
        log.info("call %s (sip %s): REFER to %s accepted; calling it", cid, old.sip_call_id,
                 new.party)
        self._defer(partial(self._check_transfer_placed, cid))

    def _check_transfer_placed(self, call_id: str) -> None:
        new = self._pending.get(call_id)
        if new is None or new.ended:
            return
        try:
            placed = new.getId() != pj.PJSUA_INVALID_ID
        except Exception:
            placed = False
        if placed:
            return
        log.warning("call %s: the INVITE to %s for the transfer was not sent", call_id,
                    new.party)
        new.ended = True
        del self._pending[call_id]
        self._stale.append(new)
        if call_id not in self._calls:
            slot = self._release(call_id)
            if slot is not None:
                self._emit(ipc.CallEnded(call=call_id, status=500, reason="Transfer failed",
                                         by="local"))

    def _complete_transfer(self, new: BridgeCall) -> None:
        cid = new.call_id
        if self._pending.get(cid) is not new:
            return
        del self._pending[cid]
        old = self._calls.get(cid)
        new.role = "main"
        new.answered = True
        self._calls[cid] = new
        self._connect(new, new.getInfo())
        if old is not None and not old.ended:
            old.role = "retired"
            old.local_end = True
            self._retired.append(old)
            self._defer(partial(self._hangup_retired, cid))
        log.info("call %s (sip %s): transferred to %s (old sip %s)", cid, new.sip_call_id,
                 new.party, old.sip_call_id if old is not None else "-")
        self._emit(ipc.CallTransferred(call=cid, to=new.party, kind="refer",
                                       sip_call_id=new.sip_call_id))
        if new.want_hold:
            self._defer(partial(self._retry_hold, cid))

    def _hangup_retired(self, call_id: str) -> None:
        for leg in list(self._retired):
            if leg.call_id != call_id or leg.ended:
                continue
            try:
                leg.hangup(pj.CallOpParam())
            except Exception as e:
                log.info("call %s: hanging up the transferred leg: %s", call_id, pj_reason(e))

    def on_replace_request(self, old: BridgeCall, prm: pj.OnCallReplaceRequestParam) -> None:
        """An INVITE with Replaces names this call: accept it for a live call of ours."""
        if old.role != "main" or old.ended or not old.company or old.slot < 0:
            prm.statusCode = 603
            log.info("call %s: INVITE with Replaces refused (call not ours)", old.call_id)

    def on_replaced(self, old: BridgeCall, prm: pj.OnCallReplacedParam) -> None:
        """pjsua answers the replacing INVITE and ends ``old``; the new call takes its place
        (same call id, same slot)."""
        cid = old.call_id
        new_id = int(prm.newCallId)
        new = self._replacing.pop(new_id, None)
        if new is None:
            acc = old.account
            if acc is None:
                log.warning("call %s: replaced, but its link is gone", cid)
                return
            new = BridgeCall(acc, new_id, call_id=cid, company=old.company,
                             direction=old.direction, slot=old.slot, table=self)
            try:
                new.party = party_of(str(new.getInfo().remoteUri))
            except Exception:
                new.party = ""
        new.call_id = cid
        new.company = old.company
        new.slot = old.slot
        new.direction = old.direction
        new.role = "main"
        new.answered = old.answered
        new.want_hold = None
        try:
            new.sip_call_id = str(new.getInfo().callIdString)
        except Exception:  # noqa: S110 - kept from the INVITE
            pass
        prm.newCall = new
        if self._calls.get(cid) is old:
            self._calls[cid] = new
        if not old.ended:
            old.role = "retired"
            old.local_end = True
            self._retired.append(old)
        log.info("call %s (sip %s): replaced by %s (sip %s)", cid, old.sip_call_id, new.party,
                 new.sip_call_id)
        self._connect(new, new.getInfo())
        self._emit(ipc.CallTransferred(call=cid, to=new.party, kind="replaces",
                                       sip_call_id=new.sip_call_id))

    def on_dtmf(self, call: BridgeCall, digit: str, method: int) -> None:
        if call.ended or not call.company or call.role != "main":
            return
        name = _DTMF_METHODS.get(method, "other")
        log.info("call %s: received DTMF %s by %s", call.call_id, digit, name)
        self._emit(ipc.CallDtmf(call=call.call_id, digit=digit, method=name))  # type: ignore[arg-type]

    @staticmethod
    def _codec(call: BridgeCall) -> str:
        try:
            ci = call.getInfo()
            for mi in ci.media:
                if mi.type == pj.PJMEDIA_TYPE_AUDIO:
                    si = call.getStreamInfo(mi.index)
                    return f"{si.codecName}/{si.codecClockRate}"
        except Exception:  # noqa: S110 - a codec name is nice to have, never required
            pass
        return ""


def source_of(rdata: pj.SipRxData) -> tuple[str, str]:
    """(``ip:port`` as pjsua2 gives it, ip alone)."""
    src = str(rdata.srcAddress)
    return src, split_source(src)[0]
