"""Companies linked at run time: stored in the database, applied without a restart.

Admins link, edit and unlink companies with bot commands or the provisioning API. Each is
kept as the same structure a ``companies.<slug>`` entry of the config file has, checked
against the same schema, stored in the ``company`` table, and applied at once: the directory
(names, dial pad, ghosts) and the PBX link in every SIP worker. Companies from the config file
are read-only here. A company unlinked while it has calls ends them first; its ghosts stay
(with their history) but say they are no longer reachable.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from .config import CompanyConfig, company_from_raw
from .errors import BridgeError, ConfigError
from .log import add_secret
from .sip.from_bridge_config import link_config

if TYPE_CHECKING:
    from .context import BridgeContext

log = logging.getLogger(__name__)

#: keys whose values are never shown back (commands, API, logs)
SECRET_KEYS = ("password",)


class CompanyError(BridgeError):
    """A refused change; ``errcode`` and ``status`` for the provisioning API."""

    def __init__(self, message: str, errcode: str = "M_INVALID_PARAM", status: int = 400) -> None:
        super().__init__(message)
        self.errcode = errcode
        self.status = status


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` over ``base``: nested dicts merge, ``None`` removes a key."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def redacted(raw: dict[str, Any]) -> dict[str, Any]:
    """The stored structure without secrets (``"***"`` where one is set)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out[key] = redacted(value)
        elif key in SECRET_KEYS and value:
            out[key] = "***"
        else:
            out[key] = value
    return out


class Companies:
    def __init__(self, ctx: BridgeContext) -> None:
        self.ctx = ctx
        #: companies of the config file (read-only at run time)
        self.from_config = frozenset(ctx.config.companies)
        #: stored structure of each company linked at run time
        self.stored: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ start
    async def load(self) -> None:
        """Add the stored companies to the config (before the SIP pool starts)."""
        for row in await self.ctx.db.fetch("SELECT slug, data FROM company ORDER BY slug"):
            slug = row["slug"]
            if slug in self.from_config:
                log.warning("company %s is in the config file and in the database; the config "
                            "file wins (unlink it at run time to drop the stored copy)", slug)
                continue
            try:
                raw = json.loads(row["data"])
                company = company_from_raw(slug, raw, self.ctx.config.path.parent)
            except (ValueError, ConfigError) as e:
                log.error("stored company %s is invalid and was not loaded: %s", slug, e)
                continue
            self.stored[slug] = raw
            self._add_secret(company)
            self.ctx.config.companies[slug] = company
        self.ctx.directory.refresh()
        if self.stored:
            log.info("%d company(ies) linked at run time: %s", len(self.stored),
                     ", ".join(sorted(self.stored)))

    # ------------------------------------------------------------ reading
    def source(self, slug: str) -> str:
        if slug in self.from_config:
            return "config"
        if slug in self.stored:
            return "database"
        raise CompanyError(f"No company {slug!r}.", "M_NOT_FOUND", 404)

    # ------------------------------------------------------------ changes
    async def create(self, slug: str, raw: Any, by: str) -> CompanyConfig:
        if slug in self.ctx.config.companies:
            raise CompanyError(f"Company {slug!r} already exists.", "M_EXISTS", 409)
        if not isinstance(raw, dict):
            raise CompanyError("The company must be an object.", "M_BAD_JSON", 400)
        company = self._check(slug, raw)
        await self._store(slug, raw, by)
        await self._apply(slug, company, None)
        log.info("company %s linked by %s (%s link)", slug, by, company.pbx.mode)
        return company

    async def update(self, slug: str, changes: Any, by: str) -> CompanyConfig:
        self._writable(slug)
        if not isinstance(changes, dict):
            raise CompanyError("The changes must be an object.", "M_BAD_JSON", 400)
        raw = merge(self.stored[slug], changes)
        company = self._check(slug, raw)
        old = self.ctx.config.companies[slug]
        await self._store(slug, raw, by)
        await self._apply(slug, company, old)
        log.info("company %s edited by %s", slug, by)
        return company

    async def delete(self, slug: str, by: str) -> None:
        self._writable(slug)
        old = self.ctx.config.companies[slug]
        await self.ctx.db.execute("DELETE FROM company WHERE slug=$1", slug)
        self.stored.pop(slug, None)
        await self._apply(slug, None, old)
        log.info("company %s unlinked by %s", slug, by)

    async def set_extension(self, slug: str, number: str, name: str, public: bool,
                            by: str) -> CompanyConfig:
        return await self.update(slug, {"extensions": {number: {"name": name,
                                                                "public": public}}}, by)

    async def remove_extension(self, slug: str, number: str, by: str) -> CompanyConfig:
        self._writable(slug)
        if number not in self.stored[slug].get("extensions", {}):
            raise CompanyError(f"{slug} has no extension {number}.", "M_NOT_FOUND", 404)
        return await self.update(slug, {"extensions": {number: None}}, by)

    # ------------------------------------------------------------ helpers
    def _writable(self, slug: str) -> None:
        if self.source(slug) == "config":
            raise CompanyError(f"{slug} comes from the config file; change it there.",
                               "M_FORBIDDEN", 403)

    def _check(self, slug: str, raw: dict[str, Any]) -> CompanyConfig:
        try:
            return company_from_raw(slug, raw, self.ctx.config.path.parent)
        except ConfigError as e:
            raise CompanyError(str(e), "M_INVALID_PARAM", 400) from None

    async def _store(self, slug: str, raw: dict[str, Any], by: str) -> None:
        await self.ctx.db.execute(
            "INSERT INTO company (slug, data, created_by, updated_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (slug) DO UPDATE SET data=excluded.data,"
            " updated_at=excluded.updated_at",
            slug, json.dumps(raw, sort_keys=True), by, int(time.time() * 1000))
        self.stored[slug] = raw

    def _add_secret(self, company: CompanyConfig) -> None:
        if company.pbx.password:
            add_secret(company.pbx.password)

    async def _apply(self, slug: str, new: CompanyConfig | None,
                     old: CompanyConfig | None) -> None:
        ctx = self.ctx
        if new is not None:
            self._add_secret(new)
            ctx.config.companies[slug] = new
        else:
            if ctx.calls is not None:
                await ctx.calls.end_company(slug, f"{old.name if old else slug} was unlinked "
                                            "from the bridge.")
            ctx.config.companies.pop(slug, None)
        ctx.directory.refresh()
        if ctx.pool is not None:
            if new is None:
                await ctx.pool.remove_link(slug)
            elif old is None or old.pbx != new.pbx:
                await ctx.pool.set_link(link_config(new, ctx.config))
            elif new.pbx.presence != "off" and old.extensions.keys() != new.extensions.keys():
                await ctx.pool.watch_extensions(link_config(new, ctx.config))
        try:
            await ctx.ghosts.sync_all()
        except Exception:
            log.exception("ghosts of %s could not be updated", slug)
