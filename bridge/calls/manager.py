"""Bridged calls in both directions: Matrix call state per call, tied to a worker's SIP call.

Matrix → PBX: an m.call.invite in a DM with a ghost places the SIP INVITE at once and
prepares the WebRTC answer in the same worker meanwhile; SIP 200 (or 183 with early media,
when configured) sends m.call.answer. PBX → Matrix: an inbound INVITE for a Matrix user opens
or reuses the DM between the caller's ghost and the user, sends m.call.invite with the
worker's WebRTC offer and answers SIP when the first Matrix device answers.

Events of one room arrive here in order (the per-room queue); SIP events of a call are
consumed by one task per call. Every state change is one log line with both call IDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mautrix.errors import MatrixError
from mautrix.types import UserID

from ..directory import allowed
from ..limits import SlidingWindow
from ..log import CALL_ID, call_context
from ..matrix import call_events as ce
from ..matrix.send import send_raw
from ..permissions import at_least, level_for
from . import outcomes
from .media import BridgedCall
from .records import CallRecord, CallRecords, duration_text

if TYPE_CHECKING:
    from ..context import BridgeContext
    from ..directory import Target

log = logging.getLogger(__name__)

DTMF_TEXT = re.compile(r"[0-9*#A-Da-d]{1,32}")
# An answer prepared this long before the PBX answered is made again (ICE gives up ~30 s).
STALE_ANSWER_S = 15.0


def _quiet(fut: asyncio.Future[str]) -> asyncio.Future[str]:
    """An answer nobody may await (the call ended first) must not log 'never retrieved'."""
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


@dataclass
class Call:
    """One bridged call as the controller holds it."""

    direction: Literal["outbound", "inbound"]
    room_id: str
    user_id: str
    ghost: str
    target: Target
    matrix_call_id: str
    party_id: str = field(default_factory=lambda: secrets.token_hex(8))
    their_party_id: str | None = None
    record: CallRecord | None = None
    sip: BridgedCall | None = None
    answered: bool = False  # the Matrix side got or gave an answer
    ended: bool = False
    offer_lifetime_ms: int = 60000
    offer_sdp: str = ""
    answer_sdp: asyncio.Future[str] | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    answer_prepared_at: float = 0.0
    invite_received_at: float = 0.0
    sip_invite_sent_at: float = 0.0
    sip_answered_at: float = 0.0
    matrix_answer_sent_at: float = 0.0

    @property
    def name(self) -> str:
        t = self.target
        if t.extension is None:
            return t.company.name
        known = t.known
        return f"{known.name} ({t.company.name} {t.extension})" if known else (
            f"{t.company.name} {t.extension}"
        )

    def tag(self) -> str:
        sip = self.sip.sip_call_id if self.sip is not None else "-"
        return f"[matrix {self.matrix_call_id} / sip {sip or '-'}]"


class CallManager:
    def __init__(self, ctx: BridgeContext, pool: Any) -> None:
        self.ctx = ctx
        self.pool = pool
        self.records = CallRecords(ctx.db)
        self.calls: dict[str, Call] = {}  # by Matrix call_id
        self.early_media_answer = ctx.config.bridge.early_media_answer
        self.limits = ctx.config.bridge.limits
        self.attempts = SlidingWindow(self.limits.call_attempts_per_minute)

    # ------------------------------------------------------------------ helpers
    def ghost_intent(self, call: Call) -> Any:
        return self.ctx.api.intent(UserID(call.ghost))

    async def send(self, call: Call, event_type: str, content: dict[str, Any]) -> None:
        try:
            await send_raw(self.ghost_intent(call), call.room_id, event_type, content)
        except MatrixError as e:
            log.warning("%s could not send %s: %s", call.tag(), event_type, e)

    async def notice(self, call: Call, text: str) -> None:
        if text:
            await self.ctx.dms.notice(call.room_id, call.ghost, text)

    async def ice_servers(self) -> list[dict[str, Any]]:
        """TURN servers from the homeserver, when it has any (cached by the context)."""
        return await self.ctx.turn_servers()

    def sip_from_user(self, user_id: str) -> str:
        local, _, server = user_id[1:].partition(":")
        return f"{local}={server}"

    def _display(self, user_id: str) -> str:
        return self.ctx.displayname(user_id)

    def remember_member(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        name = content.get("displayname")
        if isinstance(name, str) and isinstance(event.get("state_key"), str):
            self.ctx.displaynames[event["state_key"]] = name[:100]

    # ------------------------------------------------------------------ Matrix events
    async def on_call_event(self, event: dict[str, Any]) -> None:
        content = event.get("content")
        call_id = content.get("call_id") if isinstance(content, dict) else None
        with call_context(call_id if isinstance(call_id, str) else None):
            await self._on_call_event(event)

    async def _on_call_event(self, event: dict[str, Any]) -> None:
        etype, room_id, sender = event["type"], event["room_id"], event.get("sender", "")
        if not isinstance(sender, str) or self.ctx.directory.is_ghost_id(sender):
            return  # our own events
        try:
            msg = ce.parse(etype, event.get("content"))
        except ce.BadCallEvent as e:
            log.warning("bad %s from %s in %s: %s", etype, sender, room_id, e)
            call_id = (event.get("content") or {}).get("call_id") if isinstance(
                event.get("content"), dict) else None
            call = self.calls.get(call_id) if isinstance(call_id, str) else None
            if call is not None and call.room_id == room_id and call.user_id == sender \
                    and etype in ("m.call.hangup", "m.call.reject"):
                # A malformed hangup still means "hang up".
                await self.end(call, "user_hangup", "completed" if call.answered else "cancelled",
                               None, "")
            elif call is not None:
                log.info("%s keeps running despite the bad %s", call.tag(), etype)
            elif etype == "m.call.invite" and isinstance(call_id, str):
                await self._reject_invite(room_id, sender, call_id,
                                          f"The bridge cannot take this call: {e}.")
            return
        call = self.calls.get(msg.call_id)
        if isinstance(msg, ce.Invite):
            if call is None:
                await self.on_invite(event, msg)
            return
        if call is None:
            log.info("%s for unknown call %s from %s; ignored", etype, msg.call_id, sender)
            return
        if call.room_id != room_id or call.user_id != sender:
            log.warning("%s for call %s from %s in %s, not the call's party; ignored",
                        etype, msg.call_id, sender, room_id)
            return
        if isinstance(msg, ce.Candidates):
            if call.sip is not None:
                await self._safe(call, call.sip.webrtc_candidates(list(msg.candidates)))
        elif isinstance(msg, ce.SelectAnswer):
            if msg.selected_party_id != call.party_id:
                log.info("%s another party was selected; ending our leg", call.tag())
                await self.end(call, None, "answered_elsewhere", None, "", hang_matrix=False)
        elif isinstance(msg, ce.Answer):
            await self.on_answer(call, msg)
        elif isinstance(msg, ce.Hangup):
            await self.on_matrix_hangup(call, msg)
        elif isinstance(msg, ce.Negotiate):
            await self.on_negotiate(call, msg)

    async def _safe(self, call: Call, coro: Any) -> Any:
        try:
            return await coro
        except Exception as e:  # a worker-side failure must not kill the room's queue
            log.warning("%s media request failed: %s", call.tag(), e)
            return None

    async def _reject_invite(self, room_id: str, sender: str, call_id: str, text: str) -> None:
        pair = await self.ctx.dms.pair(room_id)
        ghost = pair[1] if pair else None
        if ghost is None:
            return
        intent = self.ctx.api.intent(UserID(ghost))
        try:
            await send_raw(intent, room_id, "m.call.hangup",
                           ce.hangup_content(call_id, secrets.token_hex(8), "unknown_error"))
        except MatrixError as e:
            log.warning("could not refuse call %s: %s", call_id, e)
        await self.ctx.dms.notice(room_id, ghost, text)

    async def _refuse(self, room_id: str, ghost: str, call_id: str, reason: str,
                      text: str) -> None:
        intent = self.ctx.api.intent(UserID(ghost))
        try:
            await send_raw(intent, room_id, "m.call.hangup",
                           ce.hangup_content(call_id, secrets.token_hex(8), reason))
        except MatrixError as e:
            log.warning("could not refuse call %s: %s", call_id, e)
        await self.ctx.dms.notice(room_id, ghost, text)

    # ------------------------------------------------------------------ Matrix → PBX
    async def on_invite(self, event: dict[str, Any], msg: ce.Invite) -> None:
        received = time.monotonic()
        room_id, sender = event["room_id"], event["sender"]
        pair = await self.ctx.dms.pair(room_id)
        if pair is None or pair[0] != sender:
            log.info("call %s from %s in %s: not a DM with a ghost; ignored",
                     msg.call_id, sender, room_id)
            return
        ghost = pair[1]
        unsigned = event.get("unsigned")
        age = unsigned.get("age") if isinstance(unsigned, dict) else None
        if isinstance(age, int) and age > msg.lifetime_ms:
            log.info("call %s from %s expired before it reached us; ignored", msg.call_id, sender)
            return
        target = self.ctx.directory.target_for_ghost(ghost)
        if target is None:
            await self._refuse(room_id, ghost, msg.call_id, "unknown_error",
                               "This company or extension is no longer reachable.")
            return
        level = level_for(sender, self.ctx.config.bridge.permissions)
        if not allowed(target, level):
            log.info("call %s from %s to %s refused: permission level %s",
                     msg.call_id, sender, ghost, level)
            await self._refuse(room_id, ghost, msg.call_id, "unknown_error",
                               "You are not allowed to call this number through the bridge.")
            return
        refusal = self._over_limit(sender)
        if refusal:
            log.info("call %s from %s to %s refused: %s", msg.call_id, sender, ghost, refusal)
            await self._refuse(room_id, ghost, msg.call_id, "user_busy", refusal)
            self.ctx.metrics.call_attempts.labels(target.company.slug, "outbound",
                                                  "limited").inc()
            return
        for other in self.calls.values():
            if other.room_id == room_id and not other.ended and other.direction == "inbound" \
                    and not other.answered:
                # Glare: both sides called each other. The lower call_id wins.
                if other.matrix_call_id < msg.call_id:
                    log.info("glare in %s: our call %s wins over %s", room_id,
                             other.matrix_call_id, msg.call_id)
                    return
                log.info("glare in %s: their call %s wins; ending ours %s", room_id,
                         msg.call_id, other.matrix_call_id)
                await self.end(other, "user_hangup", "glare", 486, "")
        call = Call("outbound", room_id, sender, ghost, target, msg.call_id,
                    their_party_id=msg.party_id, offer_lifetime_ms=msg.lifetime_ms,
                    invite_received_at=received)
        self.calls[msg.call_id] = call
        call.record = CallRecord(
            id=secrets.token_hex(8), direction="outbound", matrix_user=sender, room_id=room_id,
            company=target.company.slug, extension=target.number, matrix_call_id=msg.call_id,
        )
        try:
            sip = await self.pool.make_call(
                target.company.slug, target.number, self.sip_from_user(sender),
                self._display(sender),
            )
        except Exception as e:
            log.warning("%s could not place the SIP call: %s", call.tag(), e)
            await self.records.start(call.record)
            if type(e).__name__ == "Overloaded":
                await self.end(call, "user_busy", "overloaded", None,
                               "The bridge is too busy to place more calls right now; "
                               "try again in a minute.")
            elif type(e).__name__ in ("CompanyBusy", "CapacityExceeded", "WorkerUnavailable"):
                await self.end(call, "user_busy", "limited", None,
                               f"{target.company.name} has too many calls right now; "
                               "try again later.")
            else:
                await self.end(call, "unknown_error", "unreachable", None,
                               f"Could not call {call.name}: {e}")
            return
        call.sip_invite_sent_at = time.monotonic()
        call.sip = sip
        sip.correlation = call.matrix_call_id
        log.info("%s %s calls %s (%s %s), worker %d", call.tag(), sender, call.name,
                 target.company.slug, target.number, sip.worker)
        await self.records.start(call.record)
        await self.records.set_sip(call.record, sip.sip_call_id, sip.worker)
        call.offer_sdp = msg.sdp
        call.answer_prepared_at = time.monotonic()
        call.answer_sdp = _quiet(asyncio.ensure_future(self._prepare_answer(call, msg.sdp)))
        call.tasks.append(asyncio.create_task(self._follow_outbound(call)))
        call.tasks.append(asyncio.create_task(self._invite_timeout(call, msg.lifetime_ms)))

    def _over_limit(self, user_id: str) -> str | None:
        """Why a new call of this user is refused now, or None."""
        live = [c for c in self.calls.values() if not c.ended]
        mine = sum(1 for c in live if c.user_id == user_id)
        if mine >= self.limits.calls_per_user:
            return (f"You already have {mine} call(s) in progress; the limit is "
                    f"{self.limits.calls_per_user}.")
        server = user_id.split(":", 1)[1] if ":" in user_id else ""
        if server != self.ctx.config.homeserver.domain:
            theirs = sum(1 for c in live if c.user_id.endswith(":" + server))
            if theirs >= self.limits.calls_per_server:
                return f"Users of {server} have too many calls in progress; try again later."
        if not self.attempts.allow(user_id):
            return (f"Too many calls in a minute (the limit is "
                    f"{self.limits.call_attempts_per_minute}); try again shortly.")
        return None

    async def _prepare_answer(self, call: Call, offer: str) -> str:
        assert call.sip is not None
        return await call.sip.webrtc_answer(offer, await self.ice_servers())

    async def _send_answer(self, call: Call) -> bool:
        assert call.answer_sdp is not None
        if time.monotonic() - call.answer_prepared_at > STALE_ANSWER_S and call.offer_sdp:
            # The WebRTC leg answered long ago and its ICE checks (which cannot succeed before
            # the browser has our answer) may have given up: answer afresh.
            log.info("%s the PBX answered late; preparing a fresh WebRTC answer", call.tag())
            call.answer_prepared_at = time.monotonic()
            call.answer_sdp = _quiet(
                asyncio.ensure_future(self._prepare_answer(call, call.offer_sdp)))
        try:
            sdp = await call.answer_sdp
        except Exception as e:
            log.warning("%s WebRTC answer failed: %s", call.tag(), e)
            await self.end(call, "user_media_failed", "media_failed", None,
                           "The call failed: the bridge could not set up audio with your client.")
            return False
        if call.answered or call.ended:
            return True
        call.answered = True
        await self.send(call, "m.call.answer", ce.answer_content(call.matrix_call_id,
                                                                call.party_id, sdp))
        call.matrix_answer_sent_at = time.monotonic()
        return True

    async def _follow_outbound(self, call: Call) -> None:
        assert call.sip is not None
        try:
            async for ev in call.sip.events():
                kind = type(ev).__name__
                if kind == "Ringing":
                    log.info("%s ringing (%s)", call.tag(), getattr(ev, "status", ""))
                elif kind == "EarlyMedia":
                    log.info("%s early media", call.tag())
                    if self.early_media_answer:
                        await self._send_answer(call)
                elif kind == "Answered":
                    call.sip_answered_at = time.monotonic()
                    log.info("%s answered by the PBX (%s)", call.tag(), getattr(ev, "codec", ""))
                    if await self._send_answer(call):
                        timing = (call.sip_invite_sent_at - call.invite_received_at,
                                  call.matrix_answer_sent_at - call.sip_answered_at)
                        hist = self.ctx.metrics.setup_seconds
                        hist.labels("invite").observe(timing[0])
                        hist.labels("answer").observe(timing[1])
                        log.info("%s setup overhead: m.call.invite→INVITE %.1f ms,"
                                 " 200→m.call.answer %.1f ms", call.tag(),
                                 timing[0] * 1000, timing[1] * 1000)
                        if call.record is not None and call.record.answered_at is None:
                            await self.records.answered(call.record)
                elif kind == "Dtmf":
                    log.debug("%s DTMF %s from the PBX", call.tag(), getattr(ev, "digit", ""))
                elif kind == "Transferred":
                    await self.notice(call, f"The call was transferred to {ev.to}.")
                elif kind == "Ended":
                    await self._sip_ended(call, ev.status, ev.reason, ev.by)
                    return
                elif kind == "Failed":
                    log.warning("%s lost: %s", call.tag(), ev.reason)
                    o = outcomes.LOST
                    await self.end(call, o.reason, o.code, None, o.notice, touch_sip=False)
                    return
                elif kind == "MediaChanged" and ev.state == "failed" and call.answered:
                    await self.end(call, "ice_failed", "ice_failed", None,
                                   "The call ended: the audio connection to your client failed.")
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s error following the SIP call", call.tag())
            await self.end(call, "unknown_error", "error", None, outcomes.LOST.notice)

    async def _sip_ended(self, call: Call, status: int, text: str, by: str) -> None:
        if call.ended:
            return
        if call.answered:
            o = outcomes.HANGUP
            note = f"Call ended · {self._duration(call)}"
        elif by == "local":
            return  # we cancelled it ourselves; end() said why
        else:
            o = outcomes.for_sip_status(status)
            note = outcomes.notice_for(o, call.name, status, text)
        await self.end(call, o.reason, o.code, status, note, touch_sip=False)

    def _duration(self, call: Call) -> str:
        if call.record is None:
            return "0:00"
        return duration_text(call.record, int(time.time() * 1000))

    async def _invite_timeout(self, call: Call, lifetime_ms: int) -> None:
        await asyncio.sleep(lifetime_ms / 1000)
        if not call.answered and not call.ended:
            log.info("%s no answer within %d ms", call.tag(), lifetime_ms)
            o = outcomes.for_sip_status(480)
            await self.end(call, o.reason, o.code, 487,
                           outcomes.notice_for(o, call.name, 480, ""))

    async def on_answer(self, call: Call, msg: ce.Answer) -> None:
        """Our invite (PBX → Matrix) was answered by one of the user's devices."""
        if call.direction != "inbound" or call.ended or call.sip is None:
            return
        if call.answered:
            # Another device answered too late: tell it someone else was selected.
            return
        call.answered = True
        call.their_party_id = msg.party_id
        await self.send(call, "m.call.select_answer", ce.select_answer_content(
            call.matrix_call_id, call.party_id, msg.party_id or ""))
        await self._safe(call, call.sip.webrtc_accept(msg.sdp))
        await self._safe(call, call.sip.answer())
        if call.record is not None:
            await self.records.answered(call.record)
        log.info("%s answered on Matrix by party %s", call.tag(), msg.party_id)

    async def on_matrix_hangup(self, call: Call, msg: ce.Hangup) -> None:
        log.info("%s Matrix %s (%s)", call.tag(), "reject" if msg.reject else "hangup",
                 msg.reason)
        if call.ended:
            return
        if call.direction == "inbound" and not call.answered and call.sip is not None:
            status = outcomes.sip_status_for_matrix_reject(msg.reason)
            call.ended = True
            await self._safe(call, call.sip.reject(status))
            await self._finish(call, "rejected", status, msg.reason)
            return
        call.ended = True
        if call.sip is not None:
            await self._safe(call, call.sip.hangup())
        code = "completed" if call.answered else "cancelled"
        if not call.answered and msg.reason == "invite_timeout":
            code = "no_answer"  # the caller's client gave up first (its invite lifetime)
        await self._finish(call, code, None, msg.reason)
        if call.answered:
            await self.notice(call, f"Call ended · {self._duration(call)}")
        elif code == "no_answer":
            await self.notice(call, f"{call.name} did not answer.")

    async def on_negotiate(self, call: Call, msg: ce.Negotiate) -> None:
        if msg.sdp_type != "offer" or call.sip is None or call.ended:
            return
        answer = await self._safe(call, call.sip.webrtc_renegotiate(msg.sdp))
        if answer:
            await self.send(call, "m.call.negotiate", ce.negotiate_content(
                call.matrix_call_id, call.party_id, "answer", answer, msg.lifetime_ms))
            held = "a=sendonly" in msg.sdp or "a=inactive" in msg.sdp
            log.info("%s %s from Matrix", call.tag(), "hold" if held else "resume")

    async def on_dm_text(self, room_id: str, sender: str, body: str) -> bool:
        """Digits typed in the DM during a call become DTMF. True when used."""
        text = body.strip()
        if not DTMF_TEXT.fullmatch(text):
            return False
        for call in self.calls.values():
            if call.room_id == room_id and call.user_id == sender and call.answered \
                    and not call.ended and call.sip is not None:
                await self._safe(call, call.sip.send_dtmf(text.upper()))
                log.info("%s DTMF %s typed in the DM", call.tag(), text)
                return True
        return False

    # ------------------------------------------------------------------ PBX → Matrix
    async def on_incoming_call(self, sip: BridgedCall, info: Any) -> None:
        """An INVITE from a company's PBX for a Matrix user."""
        company = self.ctx.directory.companies.get(info.company)
        user_id = None
        if company is not None:
            user_id = await self.ctx.resolve_callee(info.company, info.target)
            if user_id is None and info.to_user and info.to_user != info.target:
                user_id = await self.ctx.resolve_callee(info.company, info.to_user)
        if company is None or user_id is None:
            log.info("inbound call %s from %s to %r: no such Matrix user", info.sip_call_id,
                     info.company, info.target)
            await self._reject_sip(sip, 404)
            return
        level = level_for(user_id, self.ctx.config.bridge.permissions)
        if not at_least(level, "user"):
            log.info("inbound call %s to %s refused: permission level %s", info.sip_call_id,
                     user_id, level)
            await self._reject_sip(sip, 403)
            return
        ext = info.caller_user or "unknown"
        target_ghost = self.ctx.directory.ghost_mxid(company, ext)
        from ..directory import Target
        target = Target(company, ext)
        try:
            if info.caller_display and company.extension(ext) is None:
                # The caller's SIP display name becomes the ghost's display name.
                intent = self.ctx.api.intent(UserID(target_ghost))
                await intent.ensure_registered()
                await intent.set_displayname(
                    self.ctx.config.bridge.extension_displayname_template.format(
                        name=info.caller_display[:80], company=company.name, extension=ext))
            room_id, _ = await self.ctx.dms.get_or_create(user_id, target_ghost)
        except MatrixError as e:
            log.warning("inbound call %s: no DM with %s: %s", info.sip_call_id, user_id, e)
            await self._reject_sip(sip, 480)
            return
        call = Call("inbound", room_id, user_id, target_ghost, target,
                    matrix_call_id=f"sip{secrets.token_hex(12)}", sip=sip,
                    offer_lifetime_ms=self.ctx.config.bridge.inbound_ring_seconds * 1000)
        self.calls[call.matrix_call_id] = call
        CALL_ID.set(call.matrix_call_id)  # this task is this call's; its log lines say so
        sip.correlation = call.matrix_call_id
        call.record = CallRecord(
            id=secrets.token_hex(8), direction="inbound", matrix_user=user_id, room_id=room_id,
            company=company.slug, extension=ext, matrix_call_id=call.matrix_call_id,
            sip_call_id=sip.sip_call_id, worker=sip.worker,
        )
        await self.records.start(call.record)
        log.info("%s %s (%s) calls %s", call.tag(), call.name, info.caller_uri, user_id)
        await self._safe(call, sip.ringing())
        offer = await self._safe(call, sip.webrtc_offer(await self.ice_servers()))
        if not offer:
            await self._safe(call, sip.reject(500))
            await self._finish(call, "media_failed", 500, None)
            return
        await self.send(call, "m.call.invite", ce.invite_content(
            call.matrix_call_id, call.party_id, offer, call.offer_lifetime_ms))
        call.tasks.append(asyncio.create_task(self._follow_inbound(call)))
        call.tasks.append(asyncio.create_task(self._inbound_timeout(call)))

    async def _reject_sip(self, sip: BridgedCall, status: int) -> None:
        with contextlib.suppress(Exception):
            await sip.reject(status)

    async def _follow_inbound(self, call: Call) -> None:
        assert call.sip is not None
        try:
            async for ev in call.sip.events():
                kind = type(ev).__name__
                if kind == "Ended":
                    if call.ended:
                        return
                    if call.answered:
                        await self.end(call, "user_hangup", "completed", ev.status,
                                       f"Call ended · {self._duration(call)}", touch_sip=False)
                    else:
                        await self.end(call, "user_hangup", "caller_gave_up", ev.status,
                                       f"Missed call from {call.name}.", touch_sip=False)
                    return
                if kind == "Failed":
                    o = outcomes.LOST
                    await self.end(call, o.reason, o.code, None, o.notice, touch_sip=False)
                    return
                if kind == "MediaChanged" and ev.state == "failed":
                    await self.end(call, "ice_failed", "ice_failed", None,
                                   "The call ended: the audio connection to your client failed.")
                    return
                if kind == "Transferred":
                    await self.notice(call, f"The call was transferred to {ev.to}.")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s error following the inbound SIP call", call.tag())
            await self.end(call, "unknown_error", "error", None, outcomes.LOST.notice)

    async def _inbound_timeout(self, call: Call) -> None:
        await asyncio.sleep(call.offer_lifetime_ms / 1000)
        if call.answered or call.ended:
            return
        log.info("%s not answered on Matrix in time", call.tag())
        call.ended = True
        if call.sip is not None:
            await self._safe(call, call.sip.reject(480))
        await self.send(call, "m.call.hangup", ce.hangup_content(
            call.matrix_call_id, call.party_id, "invite_timeout"))
        await self.notice(call, f"Missed call from {call.name}.")
        await self._finish(call, "missed", 480, "invite_timeout")

    # ------------------------------------------------------------------ ending
    async def end(self, call: Call, reason: str | None, code: str, status: int | None,
                  notice: str, *, touch_sip: bool = True, hang_matrix: bool = True) -> None:
        """End both legs: SIP (BYE/CANCEL/reject) and Matrix (hangup), then record it."""
        if call.ended:
            return
        call.ended = True
        if touch_sip and call.sip is not None:
            if call.direction == "inbound" and not call.answered:
                await self._safe(call, call.sip.reject(status or 480))
            else:
                await self._safe(call, call.sip.hangup())
        if hang_matrix and reason is not None:
            if call.direction == "outbound" and not call.answered:
                # Not answered yet: reject-style hangup of their invite.
                await self.send(call, "m.call.hangup", ce.hangup_content(
                    call.matrix_call_id, call.party_id, reason))
            else:
                await self.send(call, "m.call.hangup", ce.hangup_content(
                    call.matrix_call_id, call.party_id, reason))
        await self.notice(call, notice)
        await self._finish(call, code, status, reason)

    async def _finish(self, call: Call, code: str, status: int | None,
                      reason: str | None) -> None:
        call.ended = True
        self.ctx.metrics.call_attempts.labels(call.target.company.slug, call.direction,
                                              code).inc()
        if call.record is not None:
            with contextlib.suppress(Exception):
                await self.records.ended(call.record, code, status, reason)
        log.info("%s ended: %s (SIP %s, Matrix %s)", call.tag(), code, status, reason)
        current = asyncio.current_task()
        for t in call.tasks:
            if t is not current and not t.done():
                t.cancel()
        if call.answer_sdp is not None and not call.answer_sdp.done():
            call.answer_sdp.cancel()
        # Keep the entry a little while so late events for it are recognised.
        asyncio.get_running_loop().call_later(60, self.calls.pop, call.matrix_call_id, None)

    async def hangup_in_room(self, room_id: str, user_id: str) -> bool:
        """The `hangup` command: end the user's active call in this DM."""
        for call in list(self.calls.values()):
            if call.room_id == room_id and call.user_id == user_id and not call.ended:
                with call_context(call.matrix_call_id):
                    log.info("%s hung up by command", call.tag())
                    await self.end(call, "user_hangup",
                                   "completed" if call.answered else "cancelled", None,
                                   f"Call ended · {self._duration(call)}" if call.answered
                                   else "Call cancelled.")
                return True
        return False

    async def end_company(self, slug: str, text: str) -> None:
        """End every call of a company (it is being unlinked), with a notice saying why."""
        for call in list(self.calls.values()):
            if call.target.company.slug == slug and not call.ended:
                with call_context(call.matrix_call_id):
                    await self.end(call, "user_hangup", "unlinked", None, text)

    async def stop(self) -> None:
        for call in list(self.calls.values()):
            if not call.ended:
                await self.end(call, "user_hangup", "shutdown", None,
                               "The call ended because the bridge is restarting.")

