"""Routes each Matrix event (a raw dict, already ordered per room) to its handler."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .commands import CommandEvent

if TYPE_CHECKING:
    from ..calls.manager import CallManager
    from ..context import BridgeContext
    from .bot import Bot
    from .texts import Texts

log = logging.getLogger(__name__)


class EventRouter:
    def __init__(self, ctx: BridgeContext, bot: Bot, calls: CallManager, texts: Texts) -> None:
        self.ctx = ctx
        self.bot = bot
        self.calls = calls
        self.texts = texts

    async def handle(self, event: dict[str, Any]) -> None:
        etype = event.get("type")
        if not isinstance(etype, str):
            log.warning("event %s has no type; ignored", event.get("event_id"))
            return
        if etype.startswith("m.call."):
            await self.calls.on_call_event(event)
        elif etype == "m.room.member":
            self.calls.remember_member(event)
            await self.on_member(event)
        elif etype == "m.room.message":
            await self.on_message(event)

    async def on_message(self, event: dict[str, Any]) -> None:
        content = event.get("content") or {}
        sender = event.get("sender")
        body = content.get("body")
        if isinstance(sender, str) and isinstance(body, str) and not self.ctx.is_ghost(sender):
            pair = await self.ctx.dms.pair(event["room_id"])
            if pair is not None:
                if pair[0] != sender:
                    return
                prefix = self.ctx.config.bridge.command_prefix
                if body.startswith(prefix + " "):
                    # A bot command in a DM with a ghost (no bot inside): the ghost answers.
                    evt = CommandEvent(ctx=self.ctx, sender=sender, room_id=event["room_id"],
                                       args=[])
                    reply = await self.ctx.commands.run(evt, body[len(prefix):].strip())
                    await self.ctx.dms.notice(event["room_id"], pair[1], reply)
                    return
                if not await self.calls.on_dm_text(event["room_id"], sender, body):
                    await self.texts.on_dm_message(event, pair[1])
                return
        await self.bot.on_message(event)

    async def on_member(self, event: dict[str, Any]) -> None:
        state_key = event.get("state_key")
        membership = (event.get("content") or {}).get("membership")
        if not isinstance(state_key, str):
            return
        if state_key == self.ctx.bot_mxid:
            await self.bot.on_member(event)
        elif self.ctx.is_ghost(state_key):
            if membership == "invite":
                await self.ctx.dms.on_ghost_invite(event)
        elif membership == "join":
            await self.ctx.company_rooms.on_join(event)
        elif membership in ("leave", "ban"):
            pair = await self.ctx.dms.pair(event["room_id"])
            if pair is not None and pair[0] == state_key:
                log.info("%s left their DM %s with %s", state_key, event["room_id"], pair[1])
