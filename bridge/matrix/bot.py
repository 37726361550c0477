"""The bridge bot: joins DMs it is invited to and answers commands there."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mautrix.errors import MatrixError
from mautrix.types import MessageType, RoomID, TextMessageEventContent

from .commands import CommandEvent

if TYPE_CHECKING:
    from ..context import BridgeContext

log = logging.getLogger(__name__)

MAX_COMMAND_LENGTH = 2000


class Bot:
    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    async def on_member(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        if event.get("state_key") != self.ctx.bot_mxid:
            return
        room_id, sender = event["room_id"], event.get("sender", "")
        membership = content.get("membership")
        if membership == "invite":
            is_dm = content.get("is_direct") is True
            try:
                await self.ctx.bot.join_room(RoomID(room_id))
            except MatrixError as e:
                log.warning("could not join %s after %s's invite: %s", room_id, sender, e)
                return
            await self.ctx.db.execute(
                "INSERT INTO bot_room (room_id, user_id, is_dm) VALUES ($1, $2, $3) "
                "ON CONFLICT (room_id) DO UPDATE "
                "SET user_id=excluded.user_id, is_dm=excluded.is_dm",
                room_id,
                sender,
                is_dm,
            )
            log.info("joined %s (invited by %s, dm=%s)", room_id, sender, is_dm)
            if is_dm:
                await self.notice(room_id, "Hello! Send `help` to see what I can do.")
        elif membership in ("leave", "ban"):
            await self.ctx.db.execute("DELETE FROM bot_room WHERE room_id=$1", room_id)

    async def on_message(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        sender = event.get("sender")
        if not isinstance(sender, str) or sender == self.ctx.bot_mxid:
            return
        if self.ctx.directory.is_ghost_id(sender):
            return
        if content.get("msgtype") != "m.text" or not isinstance(content.get("body"), str):
            return
        body: str = content["body"].strip()
        room_id = event["room_id"]
        row = await self.ctx.db.fetchrow("SELECT is_dm FROM bot_room WHERE room_id=$1", room_id)
        if row is None:
            return
        prefix = self.ctx.config.bridge.command_prefix
        if body.startswith(prefix + " ") or body == prefix:
            body = body[len(prefix) :].strip()
        elif not row["is_dm"]:
            return
        if len(body) > MAX_COMMAND_LENGTH:
            await self.notice(room_id, "That command is too long.")
            return
        evt = CommandEvent(
            ctx=self.ctx,
            sender=sender,
            room_id=room_id,
            args=[],
            origin_ts=event.get("origin_server_ts"),
        )
        reply = await self.ctx.commands.run(evt, body)
        log.info("command from %s in %s: %s", sender, room_id, body.split(" ", 1)[0][:32])
        await self.notice(room_id, reply)

    async def notice(self, room_id: str, text: str) -> None:
        content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=text)
        try:
            await self.ctx.bot.send_message(RoomID(room_id), content)
        except MatrixError as e:
            log.warning("could not send a notice to %s: %s", room_id, e)
