"""DMs between a Matrix user and a ghost: the rooms where calls and texts happen.

Legacy 1:1 calls work only in rooms with exactly two joined members, so the bot never
joins these rooms. A DM is reused while the user is still in it; otherwise a new one is made.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from mautrix.errors import MatrixError
from mautrix.types import (
    MessageType,
    RoomCreatePreset,
    RoomID,
    TextMessageEventContent,
    UserID,
)

if TYPE_CHECKING:
    from ..context import BridgeContext

log = logging.getLogger(__name__)


class DirectMessages:
    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    async def find(self, user_id: str, ghost: str) -> str | None:
        row = await self.ctx.db.fetchrow(
            "SELECT room_id FROM dm_room WHERE user_id=$1 AND ghost_mxid=$2", user_id, ghost
        )
        return None if row is None else str(row["room_id"])

    async def pair(self, room_id: str) -> tuple[str, str] | None:
        """(user_id, ghost_mxid) of a known DM."""
        row = await self.ctx.db.fetchrow(
            "SELECT user_id, ghost_mxid FROM dm_room WHERE room_id=$1", room_id
        )
        return None if row is None else (str(row["user_id"]), str(row["ghost_mxid"]))

    async def remember(self, room_id: str, user_id: str, ghost: str) -> None:
        await self.ctx.db.execute(
            "DELETE FROM dm_room WHERE user_id=$1 AND ghost_mxid=$2", user_id, ghost
        )
        await self.ctx.db.execute(
            "INSERT INTO dm_room (room_id, user_id, ghost_mxid, created_at) VALUES ($1,$2,$3,$4)"
            " ON CONFLICT (room_id) DO UPDATE SET user_id=excluded.user_id,"
            " ghost_mxid=excluded.ghost_mxid",
            room_id,
            user_id,
            ghost,
            int(time.time() * 1000),
        )

    async def forget(self, room_id: str) -> None:
        await self.ctx.db.execute("DELETE FROM dm_room WHERE room_id=$1", room_id)

    async def _user_still_there(self, room_id: str, user_id: str, ghost: str) -> bool:
        intent = self.ctx.api.intent(UserID(ghost))
        try:
            members = await intent.get_joined_members(RoomID(room_id))
        except MatrixError:
            return False
        if UserID(ghost) not in members:
            return False
        if UserID(user_id) in members:
            return True
        # Invited but not yet joined still counts.
        try:
            state = await intent.get_state_event(RoomID(room_id), "m.room.member", user_id)  # type: ignore[arg-type]
        except MatrixError:
            return False
        return getattr(state, "membership", None) in ("invite", "join")

    async def get_or_create(
        self, user_id: str, ghost: str, welcome: str | None = None
    ) -> tuple[str, bool]:
        """(room_id, created). The ghost invites the user into a new DM when needed."""
        existing = await self.find(user_id, ghost)
        if existing and await self._user_still_there(existing, user_id, ghost):
            return existing, False
        intent = self.ctx.api.intent(UserID(ghost))
        await intent.ensure_registered()
        room_id = await intent.create_room(
            preset=RoomCreatePreset.TRUSTED_PRIVATE,
            is_direct=True,
            invitees=[UserID(user_id)],
        )
        await self.remember(str(room_id), user_id, ghost)
        log.info("created DM %s between %s and %s", room_id, user_id, ghost)
        if welcome:
            await self.notice(str(room_id), ghost, welcome)
        return str(room_id), True

    async def notice(self, room_id: str, ghost: str, text: str, **extra: Any) -> str | None:
        content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=text)
        for k, v in extra.items():
            content[k] = v
        try:
            return str(
                await self.ctx.api.intent(UserID(ghost)).send_message(RoomID(room_id), content)
            )
        except MatrixError as e:
            log.warning("could not send a notice to %s as %s: %s", room_id, ghost, e)
            return None

    async def on_ghost_invite(self, event: dict[str, Any]) -> None:
        """A user invited a ghost: accept if it stands for something, else decline."""
        ghost, room_id, sender = event["state_key"], event["room_id"], event.get("sender", "")
        target = self.ctx.directory.target_for_ghost(ghost)
        intent = self.ctx.api.intent(UserID(ghost))
        if target is None:
            try:
                await intent.ensure_registered()
                await intent.leave_room(RoomID(room_id), reason="No such company or extension")
            except MatrixError as e:
                log.info("could not decline invite of unknown ghost %s: %s", ghost, e)
            return
        try:
            await intent.ensure_registered()
            await intent.join_room(RoomID(room_id))
        except MatrixError as e:
            log.warning("%s could not join %s: %s", ghost, room_id, e)
            return
        if (event.get("content") or {}).get("is_direct") is True:
            await self.remember(room_id, sender, ghost)
            log.info("%s accepted a DM from %s in %s", ghost, sender, room_id)
