"""The explicit context object passed to every part of the bridge (no global registries)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI, IntentAPI
from mautrix.errors import MatrixError, MatrixRequestError, MNotFound
from mautrix.types import UserID
from mautrix.util.async_db import Database

from .config import Config
from .db.txn_store import TxnStore
from .directory import Directory
from .matrix.commands import CommandRegistry
from .web.metrics import Metrics

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .calls.manager import CallManager
    from .companies import Companies
    from .matrix.company_rooms import CompanyRooms
    from .matrix.dms import DirectMessages
    from .matrix.ghosts import Ghosts


@dataclass
class BridgeContext:
    config: Config
    db: Database
    txns: TxnStore
    api: AppServiceAPI
    bot: IntentAPI
    directory: Directory
    commands: CommandRegistry = field(default_factory=CommandRegistry)
    # Set by the app right after construction (they need the context themselves).
    pool: Any = field(default=None, init=False)
    metrics: Metrics = field(default_factory=Metrics, init=False)
    calls: CallManager | None = field(default=None, init=False)
    dms: DirectMessages = field(init=False)
    ghosts: Ghosts = field(init=False)
    company_rooms: CompanyRooms = field(init=False)
    companies: Companies = field(init=False)

    @property
    def bot_mxid(self) -> str:
        return self.config.bot_mxid

    def is_ghost(self, user_id: str) -> bool:
        return self.directory.is_ghost_id(user_id)

    _turn: tuple[float, list[dict[str, Any]]] | None = field(default=None, init=False)

    async def turn_servers(self) -> list[dict[str, Any]]:
        """ICE servers for WebRTC legs: the homeserver's TURN servers, when it has any."""
        now = time.monotonic()
        if self._turn is not None and self._turn[0] > now:
            return self._turn[1]
        servers: list[dict[str, Any]] = []
        ttl = 300.0
        try:
            res = await self.bot.api.request(Method.GET, Path.v3.voip.turnServer)
            uris = [u for u in res.get("uris", []) if isinstance(u, str)]
            if uris:
                servers = [{"urls": uris, "username": res.get("username", ""),
                            "credential": res.get("password", "")}]
                ttl = max(60.0, float(res.get("ttl", 86400)) / 2)
        except (MatrixError, ValueError, TypeError) as e:
            log.debug("no TURN servers from the homeserver: %s", e)
        self._turn = (now + ttl, servers)
        return servers

    async def resolve_callee(self, company: str, target: str) -> str | None:
        """The Matrix user an inbound SIP call or message for `target` is meant for:
        a number mapped in the config, or `localpart=server`."""
        cfg = self.config.companies.get(company)
        if cfg is not None and target in cfg.numbers:
            return cfg.numbers[target]
        mapped = await self.db.fetchval(
            "SELECT user_id FROM number_map WHERE company=$1 AND number=$2", company, target)
        if mapped:
            return str(mapped)
        m = re.fullmatch(r"([a-z0-9._/+-]+)=([A-Za-z0-9.-]+(?::\d+)?)", target)
        if not m:
            return None
        user_id = f"@{m.group(1)}:{m.group(2)}"
        if m.group(2) == self.config.homeserver.domain and not await self._local_user_exists(
                user_id):
            return None
        return user_id

    async def _local_user_exists(self, user_id: str) -> bool:
        """Whether a user of our homeserver exists (its profile answers); on any other
        error, assume it does (the invite that follows says otherwise)."""
        try:
            await self.bot.get_profile(UserID(user_id))
        except MNotFound:
            return False
        except MatrixRequestError as e:
            if e.http_status == 404 or e.errcode == "M_NOT_FOUND":
                return False
            log.info("could not check that %s exists: %s", user_id, e)
        except MatrixError as e:
            log.info("could not check that %s exists: %s", user_id, e)
        return True

    displaynames: dict[str, str] = field(default_factory=dict, init=False)

    def displayname(self, user_id: str) -> str:
        """A Matrix user's display name as last seen in a member event, else the localpart."""
        return self.displaynames.get(user_id) or user_id[1:].split(":", 1)[0]

    async def default_company(self, user_id: str) -> str | None:
        row = await self.db.fetchval(
            "SELECT default_company FROM user_setting WHERE user_id=$1", user_id
        )
        return str(row) if row else self.config.bridge.default_company
