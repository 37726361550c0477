"""Ghost users for companies and extensions: registration and profiles.

At start every company and every configured extension gets its ghost with the display name
and avatar from the config (uploaded only when changed). Ghosts of companies or extensions
that were removed from the config keep their rooms and history, but their display name says
they are no longer reachable.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mautrix.appservice import IntentAPI
from mautrix.errors import MatrixError
from mautrix.types import ContentURI, UserID

from ..names import Company
from .avatar import generated_avatar

if TYPE_CHECKING:
    from ..context import BridgeContext

log = logging.getLogger(__name__)

UNREACHABLE_SUFFIX = " (no longer reachable)"


class Ghosts:
    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx

    def intent(self, mxid: str) -> IntentAPI:
        return self.ctx.api.intent(UserID(mxid))

    async def ensure(self, mxid: str) -> None:
        await self.intent(mxid).ensure_registered()

    def _avatar(self, company: Company) -> tuple[str, bytes | None, str]:
        """(key, data, mime): the key changes whenever the picture would."""
        cfg = self.ctx.config.companies.get(company.slug)
        path = cfg.avatar if cfg else None
        if path:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                log.warning("avatar of %s unreadable (%s); using initials", company.slug, e)
            else:
                mime = "image/jpeg" if path.lower().endswith((".jpg", ".jpeg")) else "image/png"
                return "file:" + hashlib.sha256(data).hexdigest(), data, mime
        return "initials:" + hashlib.sha256(company.name.encode()).hexdigest(), None, "image/png"

    async def sync_all(self) -> None:
        d = self.ctx.directory
        wanted: dict[str, tuple[Company, str | None]] = {}
        for company in d.all():
            wanted[d.ghost_mxid(company)] = (company, None)
            for extension in company.extensions:
                wanted[d.ghost_mxid(company, extension.number)] = (company, extension.number)
        for mxid, (company, ext) in wanted.items():
            try:
                await self.sync_one(mxid, company, ext)
            except MatrixError as e:
                log.warning("could not set up ghost %s: %s", mxid, e)
        rows = await self.ctx.db.fetch("SELECT mxid, displayname FROM ghost WHERE reachable")
        for row in rows:
            if row["mxid"] not in wanted:
                await self.mark_unreachable(row["mxid"], row["displayname"])

    async def sync_one(self, mxid: str, company: Company, ext: str | None) -> None:
        d = self.ctx.directory
        name = d.ghost_displayname(company, ext)
        key, data, mime = self._avatar(company)
        row = await self.ctx.db.fetchrow(
            "SELECT displayname, avatar_key, avatar_mxc, reachable FROM ghost WHERE mxid=$1", mxid
        )
        intent = self.intent(mxid)
        await intent.ensure_registered()
        if row is None or row["displayname"] != name or not row["reachable"]:
            await intent.set_displayname(name)
        mxc = row["avatar_mxc"] if row is not None else None
        if row is None or row["avatar_key"] != key or not mxc:
            payload = data if data is not None else generated_avatar(company.name)
            mxc = str(await intent.upload_media(payload, mime_type=mime, filename="avatar.png"))
            await intent.set_avatar_url(ContentURI(mxc))
        await self.ctx.db.execute(
            "INSERT INTO ghost (mxid, company, extension, displayname, avatar_key, avatar_mxc,"
            " reachable) VALUES ($1, $2, $3, $4, $5, $6, true) ON CONFLICT (mxid) DO UPDATE SET"
            " displayname=excluded.displayname, avatar_key=excluded.avatar_key,"
            " avatar_mxc=excluded.avatar_mxc, reachable=true",
            mxid,
            company.slug,
            ext,
            name,
            key,
            mxc,
        )
        log.debug("ghost %s is %r", mxid, name)

    async def mark_unreachable(self, mxid: str, displayname: str) -> None:
        new = (
            displayname
            if displayname.endswith(UNREACHABLE_SUFFIX)
            else (displayname + UNREACHABLE_SUFFIX)
        )
        try:
            await self.intent(mxid).set_displayname(new)
        except MatrixError as e:
            log.warning("could not rename removed ghost %s: %s", mxid, e)
            return
        await self.ctx.db.execute(
            "UPDATE ghost SET displayname=$2, reachable=false WHERE mxid=$1", mxid, new
        )
        log.info("%s is no longer in the config; marked unreachable", mxid)

    async def unreachable_name(self, mxid: str) -> str | None:
        row = await self.ctx.db.fetchrow(
            "SELECT displayname FROM ghost WHERE mxid=$1 AND NOT reachable", mxid
        )
        return None if row is None else str(row["displayname"])
