"""The appservice HTTP API the homeserver calls: transactions, user and alias queries, ping."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..db.txn_store import TxnStore
from ..web.errors import ApiError, error_middleware
from .auth import hs_token_middleware
from .dispatch import RoomDispatcher

log = logging.getLogger(__name__)

QueryHandler = Callable[[str], Awaitable[bool]]


async def _no(_: str) -> bool:
    return False


class AppserviceServer:
    """Builds the aiohttp application; other modules add their routes to `app`."""

    def __init__(
        self,
        hs_token: str,
        store: TxnStore,
        dispatcher: RoomDispatcher,
        *,
        query_user: QueryHandler = _no,
        query_alias: QueryHandler = _no,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.query_user = query_user
        self.query_alias = query_alias
        self.app = web.Application(
            middlewares=[error_middleware, hs_token_middleware(hs_token)],
            client_max_size=16 * 1024 * 1024,
        )
        r = self.app.router
        for prefix in ("/_matrix/app/v1", ""):
            r.add_put(prefix + "/transactions/{txn_id}", self.put_transaction)
            r.add_get(prefix + "/users/{user_id}", self.get_user)
            r.add_get(prefix + "/rooms/{alias}", self.get_alias)
        r.add_post("/_matrix/app/v1/ping", self.post_ping)
        r.add_get("/health", self.get_health)
        r.add_get("/ready", self.get_ready)
        self._runner: web.AppRunner | None = None
        self.ready_check: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.metrics: Any = None

    async def put_transaction(self, request: web.Request) -> web.Response:
        txn_id = request.match_info["txn_id"]
        started = time.monotonic()
        if await self.store.is_processed(txn_id):
            log.info("transaction %s was already processed; acknowledged again", txn_id)
            return web.json_response({})
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("events", []), list):
            raise ApiError(400, "M_BAD_JSON", "body must be an object with an events list")
        events: list[Any] = body.get("events", [])
        log.debug("transaction %s: %d events", txn_id, len(events))
        for event in events:
            if isinstance(event, dict):
                self.dispatcher.submit(event)
            else:
                log.warning("transaction %s holds a non-object event; ignored", txn_id)
        await self.store.mark_processed(txn_id)
        if self.metrics is not None:
            self.metrics.transaction_seconds.observe(time.monotonic() - started)
        return web.json_response({})

    async def get_user(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        if await self.query_user(user_id):
            return web.json_response({})
        raise ApiError(404, "M_NOT_FOUND", f"{user_id} does not exist here")

    async def get_alias(self, request: web.Request) -> web.Response:
        alias = request.match_info["alias"]
        if await self.query_alias(alias):
            return web.json_response({})
        raise ApiError(404, "M_NOT_FOUND", f"{alias} does not exist here")

    async def post_ping(self, request: web.Request) -> web.Response:
        log.info("ping from the homeserver")
        return web.json_response({})

    async def get_health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def get_ready(self, _: web.Request) -> web.Response:
        if self.ready_check is None:
            return web.json_response({"ready": False}, status=503)
        checks = await self.ready_check()
        return web.json_response(checks, status=200 if checks["ready"] else 503)

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("appservice API listening on %s:%d", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
