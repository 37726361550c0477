"""A minimal Matrix client-server API user for tests (aiohttp, no bridge code).

It syncs in the background and keeps every room event it saw, so tests can wait for what
the other side (the bridge) sent. It also offers a RoomTransport for the test call client.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp


class MatrixError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class MatrixUser:
    def __init__(self, base_url: str, user_id: str, access_token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.user_id = user_id
        self.token = access_token
        self.session = aiohttp.ClientSession()
        self.events: list[dict[str, Any]] = []
        self.invites: dict[str, dict[str, Any]] = {}
        self._new = asyncio.Condition()
        self._sync_task: asyncio.Task[None] | None = None
        self._since: str | None = None
        self.synced = asyncio.Event()  # set after the first (initial) sync

    async def request(self, method: str, path: str, body: Any = None,
                      query: dict[str, str] | None = None) -> Any:
        url = self.base_url + path
        async with self.session.request(
            method, url, json=body, params=query,
            headers={"Authorization": f"Bearer {self.token}"},
        ) as r:
            data = await r.json(content_type=None)
            if r.status >= 400:
                raise MatrixError(r.status, data)
            return data

    # --- rooms and events -------------------------------------------------------------
    async def create_dm(self, other: str) -> str:
        res = await self.request("POST", "/_matrix/client/v3/createRoom", {
            "invite": [other], "is_direct": True, "preset": "trusted_private_chat",
        })
        return str(res["room_id"])

    async def join(self, room: str) -> str:
        res = await self.request("POST", f"/_matrix/client/v3/join/{quote(room)}", {})
        return str(res["room_id"])

    async def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        txn = uuid.uuid4().hex
        res = await self.request(
            "PUT",
            f"/_matrix/client/v3/rooms/{quote(room_id)}/send/{quote(event_type)}/{txn}",
            content,
        )
        return str(res["event_id"])

    async def send_text(self, room_id: str, text: str) -> str:
        return await self.send(room_id, "m.room.message", {"msgtype": "m.text", "body": text})

    async def joined_members(self, room_id: str) -> list[str]:
        res = await self.request("GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/joined_members")
        return list(res["joined"])

    # --- sync ---------------------------------------------------------------------------
    def start_sync(self) -> None:
        if self._sync_task is None:
            self._sync_task = asyncio.create_task(self._sync_loop())

    #: how long a /sync long-polls, and the filter it sends (None: Synapse's default).
    sync_timeout_ms = 2000
    sync_filter: str | None = None

    def on_timeline(self, room_id: str, timeline: dict[str, Any], resumed: bool) -> None:
        """Each joined room's timeline as a sync returns it (``resumed``: not the first
        sync); for subclasses that look at more than the events."""

    async def _sync_loop(self) -> None:
        while True:
            query = {"timeout": str(self.sync_timeout_ms)}
            if self.sync_filter is not None:
                query["filter"] = self.sync_filter
            if self._since:
                query["since"] = self._since
            try:
                res = await self.request("GET", "/_matrix/client/v3/sync", query=query)
            except (aiohttp.ClientError, MatrixError):
                await asyncio.sleep(0.5)
                continue
            resumed = self._since is not None
            self._since = res.get("next_batch")
            new: list[dict[str, Any]] = []
            rooms = res.get("rooms", {})
            for room_id, room in rooms.get("join", {}).items():
                self.on_timeline(room_id, room.get("timeline", {}), resumed)
                for ev in room.get("timeline", {}).get("events", []):
                    ev["room_id"] = room_id
                    new.append(ev)
            for room_id, room in rooms.get("invite", {}).items():
                self.invites[room_id] = room
            if new or rooms.get("invite"):
                async with self._new:
                    self.events.extend(new)
                    self._new.notify_all()
            self.synced.set()

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0,
                       start: int = 0) -> dict[str, Any]:
        """The first event (from index `start`) for which pred is true."""
        deadline = time.monotonic() + timeout
        seen = start
        async with self._new:
            while True:
                for ev in self.events[seen:]:
                    if pred(ev):
                        return ev
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching event within {timeout:.0f} s")
                try:
                    await asyncio.wait_for(self._new.wait(), left)
                except TimeoutError:
                    pass

    async def wait_invite(self, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.invites:
                return next(iter(self.invites))
            await asyncio.sleep(0.1)
        raise TimeoutError("no invite")

    def transport(self, room_id: str, since: int | None = None) -> RoomTransport:
        """Events of the room from index `since` of self.events (default: from now on)."""
        return RoomTransport(self, room_id, since)

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            try:
                await self._sync_task
            except (asyncio.CancelledError, Exception):
                pass
        await self.session.close()


class RoomTransport:
    """Sends events into one room and yields the other members' events from it."""

    def __init__(self, user: MatrixUser, room_id: str, since: int | None = None) -> None:
        self.user = user
        self.room_id = room_id
        self._cursor = len(user.events) if since is None else since

    async def send(self, event_type: str, content: dict[str, Any]) -> str:
        return await self.user.send(self.room_id, event_type, content)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            ev = await self.user.wait_for(
                lambda e: e["room_id"] == self.room_id and e.get("sender") != self.user.user_id,
                timeout=3600, start=self._cursor,
            )
            self._cursor = self.user.events.index(ev) + 1
            yield ev


async def login(base_url: str, user_id: str, password: str,
                user_class: type[MatrixUser] = MatrixUser) -> MatrixUser:
    async with aiohttp.ClientSession() as s, s.post(
        base_url + "/_matrix/client/v3/login",
        json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
              "password": password},
    ) as r:
        data = await r.json()
        if r.status != 200:
            raise MatrixError(r.status, data)
    return user_class(base_url, data["user_id"], data["access_token"])
