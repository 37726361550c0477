"""Text between Matrix DMs and PBX extensions (SIP MESSAGE), in both directions.

A message in a DM with an extension's ghost goes to that extension as SIP MESSAGE; one sent
to a company's main-line ghost goes to the main line. Images and files become a short text
with a download link; an edit is sent again, marked as a correction. A message the PBX did not
take (404, 480, a timeout) gets a notice in reply saying so and why: nothing is lost silently.
A MESSAGE from an extension to a Matrix user (a mapped number or localpart=server) arrives in
their DM from the extension's ghost. Each Matrix event and SIP message is recorded.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from mautrix.errors import MatrixError
from mautrix.types import MessageType, RoomID, TextMessageEventContent, UserID

from ..directory import allowed
from ..limits import SlidingWindow
from ..permissions import at_least, level_for

if TYPE_CHECKING:
    from ..context import BridgeContext

log = logging.getLogger(__name__)

_FILE_TYPES = {"m.image": "an image", "m.file": "a file", "m.audio": "an audio clip",
               "m.video": "a video"}


def sip_text_for(content: dict[str, Any], media_url: str | None) -> str | None:
    """What to send over SIP for a Matrix message content, or None to send nothing."""
    msgtype = content.get("msgtype")
    body = content.get("body")
    if not isinstance(body, str):
        return None
    new = content.get("m.new_content")
    relates = content.get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == "m.replace":
        if isinstance(new, dict) and isinstance(new.get("body"), str):
            return f"Correction: {new['body']}"
        return None
    if msgtype in ("m.text", "m.notice"):
        return body
    if msgtype == "m.emote":
        return f"* {body}"
    if msgtype in _FILE_TYPES:
        what = _FILE_TYPES[msgtype]
        link = f": {media_url}" if media_url else ""
        return f"[sent {what}: {body}{link}]"
    if msgtype == "m.location":
        geo = content.get("geo_uri")
        return f"[location: {geo if isinstance(geo, str) else body}]"
    return None


class Texts:
    def __init__(self, ctx: BridgeContext, pool: Any) -> None:
        self.ctx = ctx
        self.pool = pool
        self.rate = SlidingWindow(ctx.config.bridge.limits.messages_per_minute)

    def media_url(self, content: dict[str, Any]) -> str | None:
        url = content.get("url")
        if not isinstance(url, str) or not url.startswith("mxc://"):
            return None
        base = self.ctx.config.homeserver.address
        return f"{base}/_matrix/client/v1/media/download/{url.removeprefix('mxc://')}"

    async def record(self, event_id: str, room_id: str, direction: str, company: str,
                     extension: str, status: int | None, reason: str | None) -> None:
        await self.ctx.db.execute(
            "INSERT INTO message_map (event_id, room_id, direction, company, extension,"
            " sip_status, sip_reason, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
            " ON CONFLICT (event_id) DO NOTHING",
            event_id, room_id, direction, company, extension, status, reason,
            int(time.time() * 1000),
        )

    async def on_dm_message(self, event: dict[str, Any], ghost: str) -> None:
        content = event.get("content") or {}
        room_id, sender, event_id = event["room_id"], event["sender"], event["event_id"]
        target = self.ctx.directory.target_for_ghost(ghost)
        if target is None:
            await self._reply(room_id, ghost, event_id,
                              "Not delivered: this company or extension is no longer reachable.")
            return
        text = sip_text_for(content, self.media_url(content))
        if text is None:
            return
        level = level_for(sender, self.ctx.config.bridge.permissions)
        if not allowed(target, level):
            await self._reply(room_id, ghost, event_id,
                              "Not delivered: you may not send messages to this number.")
            return
        if not self.rate.allow(sender):
            log.info("message %s from %s refused: over %d per minute", event_id, sender,
                     self.rate.limit)
            self.ctx.metrics.messages.labels("matrix_to_sip", "limited").inc()
            await self._reply(room_id, ghost, event_id,
                              f"Not delivered: you sent more than {self.rate.limit} messages "
                              "in a minute; try again shortly.")
            return
        local, _, server = sender[1:].partition(":")
        try:
            result = await self.pool.send_message(
                target.company.slug, target.number, text, f"{local}={server}",
                self.ctx.displayname(sender),
            )
        except Exception as e:
            log.warning("message %s to %s %s failed: %s", event_id, target.company.slug,
                        target.number, e)
            await self.record(event_id, room_id, "out", target.company.slug, target.number,
                              None, str(e))
            await self._reply(room_id, ghost, event_id, f"Not delivered: {e}.")
            return
        await self.record(event_id, room_id, "out", target.company.slug, target.number,
                          result.status, result.reason)
        self.ctx.metrics.messages.labels(
            "matrix_to_sip", "delivered" if result.delivered else "failed").inc()
        if result.delivered:
            log.info("message %s delivered to %s %s (%d)", event_id, target.company.slug,
                     target.number, result.status)
            return
        log.info("message %s to %s %s not delivered: %d %s", event_id, target.company.slug,
                 target.number, result.status, result.reason)
        why = {404: "the number does not exist", 480: "the extension is not available now",
               408: "the phone system did not answer", 486: "the extension is busy",
               403: "the phone system refused it", 415: "the extension cannot take text"}
        reason = why.get(result.status, f"{result.status} {result.reason}".strip())
        await self._reply(room_id, ghost, event_id, f"Not delivered: {reason} ({result.status}).")

    async def _reply(self, room_id: str, ghost: str, event_id: str, text: str) -> None:
        content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=text)
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": event_id}}
        try:
            await self.ctx.api.intent(UserID(ghost)).send_message(RoomID(room_id), content)
        except MatrixError as e:
            log.warning("could not send a delivery notice to %s: %s", room_id, e)

    async def on_sip_message(self, msg: Any) -> int:
        """A MESSAGE from an extension for a Matrix user; the SIP status for the PBX (the
        worker answers with it when it holds the request): 200 once the event is sent, 404
        for no such user, 403 when the user may not receive it, 480 when Matrix failed."""
        company = self.ctx.directory.companies.get(msg.company)
        user_id = await self.ctx.resolve_callee(msg.company, msg.to_user) if company else None
        if company is None or user_id is None:
            log.warning("MESSAGE from %s for %r: no such Matrix user: 404", msg.from_uri,
                        msg.to_user)
            self.ctx.metrics.messages.labels("sip_to_matrix", "not_found").inc()
            return 404
        if not at_least(level_for(user_id, self.ctx.config.bridge.permissions), "user"):
            log.info("MESSAGE from %s to %s refused: permission level: 403", msg.from_uri,
                     user_id)
            self.ctx.metrics.messages.labels("sip_to_matrix", "refused").inc()
            return 403
        ext = msg.from_user or "unknown"
        ghost = self.ctx.directory.ghost_mxid(company, ext)
        try:
            room_id, _ = await self.ctx.dms.get_or_create(user_id, ghost)
            content = TextMessageEventContent(msgtype=MessageType.TEXT, body=msg.text)
            event_id = await self.ctx.api.intent(UserID(ghost)).send_message(
                RoomID(room_id), content)
        except MatrixError as e:
            log.error("MESSAGE from %s to %s could not be delivered on Matrix: %s: 480",
                      msg.from_uri, user_id, e)
            self.ctx.metrics.messages.labels("sip_to_matrix", "failed").inc()
            return 480
        await self.record(str(event_id), room_id, "in", company.slug, ext, 200, "OK")
        self.ctx.metrics.messages.labels("sip_to_matrix", "delivered").inc()
        log.info("MESSAGE from %s delivered to %s in %s", msg.from_uri, user_id, room_id)
        return 200
