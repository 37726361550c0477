"""The controller's lifecycle: open the database, serve the appservice API, run the bot."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import aiohttp
from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI
from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.errors import MatrixError
from mautrix.types import UserID
from mautrix.util.async_db import Database

from .calls.manager import CallManager
from .companies import Companies
from .config import Config
from .context import BridgeContext
from .db.database import open_database
from .db.txn_store import TxnStore
from .directory import Directory
from .matrix.bot import Bot
from .matrix.commands import builtin_commands
from .matrix.company_commands import company_commands
from .matrix.company_rooms import CompanyRooms
from .matrix.dispatch import RoomDispatcher
from .matrix.dms import DirectMessages
from .matrix.ghosts import Ghosts
from .matrix.name_commands import name_commands
from .matrix.number_commands import number_commands
from .matrix.presence import GhostPresence
from .matrix.router import EventRouter
from .matrix.server import AppserviceServer
from .matrix.status_commands import status_commands
from .matrix.texts import Texts
from .sip.from_bridge_config import sip_config
from .sip.pool import WorkerPool
from .web.provisioning import Provisioning
from .web.thirdparty import ThirdParty

log = logging.getLogger(__name__)

USER_AGENT = "matrix-sip-bridge/0.1"


class Bridge:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.db: Database | None = None
        self.ctx: BridgeContext | None = None
        self.server: AppserviceServer | None = None
        self.dispatcher: RoomDispatcher | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._bot_setup: asyncio.Task[None] | None = None
        self.pool: WorkerPool | None = None
        self.calls: CallManager | None = None
        self.presence: GhostPresence | None = None

    async def open_database(self) -> None:
        """Separate step so that an unreachable database is reported before anything runs."""
        self.db = await open_database(self.config.appservice.database)

    async def start(self) -> None:
        cfg = self.config
        if self.db is None:
            await self.open_database()
        assert self.db is not None
        txns = TxnStore(self.db)
        await txns.prune()
        self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        api = AppServiceAPI(
            base_url=cfg.homeserver.address,
            bot_mxid=UserID(cfg.bot_mxid),
            token=cfg.appservice.as_token,
            log=logging.getLogger("mau.as"),  # type: ignore[arg-type]
            state_store=PgASStateStore(self.db),
            client_session=self._session,
            bridge_name="sip",
        )
        ctx = BridgeContext(
            config=cfg,
            db=self.db,
            txns=txns,
            api=api,
            bot=api.bot_intent(),
            directory=Directory(cfg),
        )
        ctx.dms = DirectMessages(ctx)
        ctx.ghosts = Ghosts(ctx)
        ctx.company_rooms = CompanyRooms(ctx)
        ctx.companies = Companies(ctx)
        await ctx.companies.load()
        self.ctx = ctx
        builtin_commands(ctx.commands)
        name_commands(ctx.commands)
        status_commands(ctx.commands)
        number_commands(ctx.commands)
        company_commands(ctx.commands)
        self.pool = WorkerPool(sip_config(cfg))
        self.calls = CallManager(ctx, self.pool)
        ctx.pool, ctx.calls = self.pool, self.calls
        calls = self.calls

        async def incoming(handle: Any) -> None:
            await calls.on_incoming_call(handle, handle.info)

        self.pool.on_incoming_call = incoming
        self.pool.on_audio_stats = ctx.metrics.audio_stats
        self.presence = GhostPresence(ctx)
        self.pool.on_extension_state = self.presence.on_extension_state
        await self.pool.start()
        self.presence.start()
        bot = Bot(ctx)
        texts = Texts(ctx, self.pool)
        self.pool.on_message = texts.on_sip_message
        router = EventRouter(ctx, bot, self.calls, texts)
        self.dispatcher = RoomDispatcher(router.handle, txns)
        self.server = AppserviceServer(
            cfg.appservice.hs_token,
            txns,
            self.dispatcher,
            query_user=self._query_user,
            query_alias=ctx.company_rooms.query_alias,
        )
        ThirdParty(ctx).register(self.server.app)
        if cfg.appservice.provisioning_secret:
            Provisioning(ctx, cfg.appservice.provisioning_secret).register(self.server.app)
        self.server.ready_check = self._ready
        await self.server.start(cfg.appservice.hostname, cfg.appservice.port)
        ctx.metrics.watch(ctx)
        self.server.metrics = ctx.metrics
        if cfg.metrics.enabled:
            await ctx.metrics.start(*cfg.metrics.listen)
        self._bot_setup = asyncio.create_task(self._set_up_bot())
        log.info("bridge started as %s for %s", cfg.bot_mxid, cfg.homeserver.domain)

    async def _set_up_bot(self) -> None:
        """Register the bot and set its profile; retries while the homeserver is unreachable."""
        assert self.ctx is not None
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self.ctx.bot.ensure_registered()
                await self.ctx.bot.set_displayname(self.config.appservice.bot_displayname)
                log.info("bot %s is registered", self.ctx.bot_mxid)
                await self.ctx.ghosts.sync_all()
                for company in self.ctx.directory.all():
                    await self.ctx.company_rooms.ensure(company)
                log.info("ghosts and rooms of %d companies are set up",
                         len(self.ctx.directory.companies))
                return
            except (aiohttp.ClientError, MatrixError, OSError) as e:
                log.warning("homeserver not ready (%s); retrying in %.0f s", e, delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 60.0)

    async def _ready(self) -> dict[str, Any]:
        """What /ready reports: homeserver and database reachable, a worker, PBX links up."""
        assert self.ctx is not None
        checks: dict[str, Any] = {}
        try:
            await self.ctx.db.fetchval("SELECT 1")
            checks["database"] = True
        except Exception:
            checks["database"] = False
        try:
            await self.ctx.bot.api.request(Method.GET, Path.v3.account.whoami)
            checks["homeserver"] = True
        except Exception:
            checks["homeserver"] = False
        workers = self.pool.workers() if self.pool is not None else []
        checks["workers_alive"] = sum(1 for w in workers if w.alive)
        links = self.pool.link_states() if self.pool is not None else {}
        down = sorted(slug for slug, st in links.items() if st.state != "registered")
        checks["pbx_links_down"] = down
        checks["ready"] = (checks["database"] and checks["homeserver"]
                           and checks["workers_alive"] > 0 and not down)
        return checks

    async def _query_user(self, user_id: str) -> bool:
        assert self.ctx is not None
        target = self.ctx.directory.target_for_ghost(user_id)
        if target is None:
            return False
        await self.ctx.api.intent(UserID(user_id)).ensure_registered()
        return True

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
        except BaseException:
            # Close what did start (the database thread, workers) so the process can exit.
            await self.stop()
            raise
        await self._stopping.wait()
        log.info("stopping")
        await self.stop()

    async def stop(self) -> None:
        self._stopping.set()
        if self._bot_setup is not None:
            self._bot_setup.cancel()
        if self.server is not None:
            await self.server.stop()
        if self.ctx is not None:
            await self.ctx.metrics.stop()
        if self.dispatcher is not None:
            await self.dispatcher.drain()
        if self.calls is not None:
            await self.calls.stop()
        if self.presence is not None:
            await self.presence.stop()
        if self.pool is not None:
            await self.pool.stop()
        if self._session is not None:
            await self._session.close()
        if self.db is not None:
            await self.db.stop()
        log.info("stopped")
