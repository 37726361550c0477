"""An extension's state at its PBX, shown as its ghost's Matrix presence.

For companies whose ``pbx.presence`` is on, the SIP pool reports each extension's state
(``pool.on_extension_state``, see :mod:`bridge.sip.presence`) and the extension's ghost says
it through the homeserver (``PUT /_matrix/client/v3/presence/{ghost}/status`` as the ghost):

| PBX       | Matrix                                   |
|-----------|------------------------------------------|
| online    | ``online``                               |
| busy      | ``unavailable``, status "On a call"      |
| offline   | ``offline`` (also: subscription failed)  |

Synapse (1.163, read and measured) puts a user offline when, at one of its checks, the user
neither synced nor was active (a presence PUT counts) for ``sync_online_timeout`` (30 s by
default, ``presence`` section of its config); an online user is checked again
``last_active_granularity`` (60 s) after its last update, so a ghost set online and left
alone is offline a minute later. Ghosts never sync: every :data:`REFRESH_S` (below
``sync_online_timeout``) the state of each ghost that is not offline is set again; an offline
ghost needs nothing. States are applied in the order the PBX reported them (the latest wins
when PUTs of one ghost overlap). Appservice users are not rate-limited (``rate_limited:
false`` in the registration), which the quick busy/online changes need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import aiohttp
from mautrix.errors import MatrixError
from mautrix.types import PresenceState, UserID

if TYPE_CHECKING:
    from ..context import BridgeContext
    from ..sip.events import ExtensionStatus

log = logging.getLogger(__name__)

#: below Synapse's default sync_online_timeout (30 s), with room for a slow request
REFRESH_S = 20.0
ON_A_CALL = "On a call"

_MATRIX: dict[str, tuple[PresenceState, str | None]] = {
    "online": (PresenceState.ONLINE, None),
    "busy": (PresenceState.UNAVAILABLE, ON_A_CALL),
    "offline": (PresenceState.OFFLINE, None),
}


class GhostPresence:
    def __init__(self, ctx: BridgeContext, refresh_s: float = REFRESH_S) -> None:
        self.ctx = ctx
        self.refresh_s = refresh_s
        #: ghost → (company, presence, status message) as last reported
        self._current: dict[str, tuple[str, PresenceState, str | None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_loop(), name="ghost-presence")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _enabled(self, company: str) -> bool:
        cfg = self.ctx.config.companies.get(company)
        return cfg is not None and cfg.pbx.presence != "off"

    async def on_extension_state(self, status: ExtensionStatus) -> None:
        """The pool's handler; the part before the first ``await`` runs in report order."""
        company = self.ctx.directory.companies.get(status.company)
        if company is None or not self._enabled(status.company):
            return
        mxid = self.ctx.directory.ghost_mxid(company, status.extension)
        presence, message = _MATRIX[status.state]
        self._current[mxid] = (status.company, presence, message)
        log.info("%s is %s%s (extension %s of %s%s)", mxid, presence.value,
                 f' "{message}"' if message else "", status.extension, status.company,
                 f": {status.reason}" if status.reason else "")
        await self._send(mxid)

    async def _send(self, mxid: str) -> None:
        lock = self._locks.setdefault(mxid, asyncio.Lock())
        async with lock:
            current = self._current.get(mxid)
            if current is None:
                return
            _company, presence, message = current
            try:
                await self.ctx.api.intent(UserID(mxid)).set_presence(
                    presence, status=message, ignore_cache=True)
            except (MatrixError, aiohttp.ClientError, OSError) as e:
                log.warning("could not set the presence of %s: %s", mxid, e)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            for mxid, (company, presence, _message) in list(self._current.items()):
                if not self._enabled(company):
                    self._current.pop(mxid, None)  # presence switched off: Synapse times out
                elif presence is not PresenceState.OFFLINE:
                    log.debug("presence of %s repeated (%s)", mxid, presence.value)
                    await self._send(mxid)
