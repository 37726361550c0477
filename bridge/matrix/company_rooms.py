"""Public company rooms: `#sip_acme:HS`, created on demand and listed in the room directory.

A user who joins a company room gets a DM with the company's ghost (no bot inside), from
which they call. The room is published both in the server's own room list and under the
bridge's appservice network, so "Explore rooms" finds it by the company's name.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mautrix.errors import MatrixError
from mautrix.types import RoomCreatePreset, RoomDirectoryVisibility, UserID

from ..names import Company

if TYPE_CHECKING:
    from ..context import BridgeContext

log = logging.getLogger(__name__)

NETWORK_ID = "sip"


def welcome_text(company: Company) -> str:
    return (
        f"This is {company.name}'s line. Press the call button (phone icon) to call "
        f"{company.name}; messages you write here go to them as text where they support it."
    )


class CompanyRooms:
    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    async def room_of(self, company: Company) -> str | None:
        row = await self.ctx.db.fetchrow(
            "SELECT room_id FROM company_room WHERE company=$1", company.slug
        )
        return None if row is None else str(row["room_id"])

    async def company_of(self, room_id: str) -> Company | None:
        row = await self.ctx.db.fetchrow(
            "SELECT company FROM company_room WHERE room_id=$1", room_id
        )
        return None if row is None else self.ctx.directory.companies.get(str(row["company"]))

    async def ensure(self, company: Company) -> str:
        existing = await self.room_of(company)
        if existing:
            return existing
        d = self.ctx.directory
        ghost = d.ghost_mxid(company)
        intent = self.ctx.api.intent(UserID(ghost))
        await intent.ensure_registered()
        alias_local = self.ctx.config.bridge.alias_template.format(name=company.slug)
        avatar = await self.ctx.db.fetchval("SELECT avatar_mxc FROM ghost WHERE mxid=$1", ghost)
        initial_state: list[dict[str, Any]] = [
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "world_readable"},
            },
            {
                "type": "m.room.guest_access",
                "state_key": "",
                "content": {"guest_access": "can_join"},
            },
        ]
        if avatar:
            initial_state.append(
                {"type": "m.room.avatar", "state_key": "", "content": {"url": avatar}}
            )
        room_id = await intent.create_room(
            alias_localpart=alias_local,
            visibility=RoomDirectoryVisibility.PUBLIC,
            preset=RoomCreatePreset.PUBLIC,
            name=company.name,
            topic=company.description or f"{company.name} on the phone bridge",
            initial_state=initial_state,
        )
        await self.ctx.db.execute(
            "INSERT INTO company_room (company, room_id) VALUES ($1, $2) "
            "ON CONFLICT (company) DO UPDATE SET room_id=excluded.room_id",
            company.slug,
            str(room_id),
        )
        try:
            await intent.api.request(
                "PUT",  # type: ignore[arg-type]
                f"/_matrix/client/v3/directory/list/appservice/{NETWORK_ID}/{room_id}",  # type: ignore[arg-type]
                {"visibility": "public"},
            )
        except MatrixError as e:
            log.warning("could not list %s under the appservice network: %s", room_id, e)
        log.info("created company room %s for %s (%s)", room_id, company.slug, d.alias(company))
        return str(room_id)

    async def query_alias(self, alias: str) -> bool:
        company = self.ctx.directory.company_for_alias(alias)
        if company is None:
            return False
        await self.ensure(company)
        return True

    async def on_join(self, event: dict[str, Any]) -> None:
        """A Matrix user joined a company room: open their DM with the company ghost."""
        user = event.get("state_key")
        if not isinstance(user, str) or self.ctx.is_ghost(user) or user == self.ctx.bot_mxid:
            return
        company = await self.company_of(event["room_id"])
        if company is None:
            return
        ghost = self.ctx.directory.ghost_mxid(company)
        try:
            room_id, created = await self.ctx.dms.get_or_create(user, ghost, welcome_text(company))
        except MatrixError as e:
            log.warning("could not open a DM between %s and %s: %s", user, ghost, e)
            return
        log.info("%s joined %s's room; DM %s (new=%s)", user, company.slug, room_id, created)
