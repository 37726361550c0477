"""Ordered, per-room handling of Matrix events.

The transaction endpoint only enqueues; each room has its own queue and task, so the events
of one room (and thus of one call) are handled one after another, in the order the
homeserver sent them, while different rooms proceed concurrently. Events already handled
(persisted by event ID) are skipped, also after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..db.txn_store import TxnStore

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
MAX_QUEUED_PER_ROOM = 1000


class RoomDispatcher:
    def __init__(self, handler: EventHandler, store: TxnStore) -> None:
        self._handler = handler
        self._store = store
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    def submit(self, event: dict[str, Any]) -> None:
        if self._closing:
            return
        room_id = event.get("room_id")
        if not isinstance(room_id, str) or not isinstance(event.get("event_id"), str):
            log.warning("ignored an event without room_id or event_id (type %r)", event.get("type"))
            return
        queue = self._queues.get(room_id)
        if queue is None:
            queue = asyncio.Queue(MAX_QUEUED_PER_ROOM)
            self._queues[room_id] = queue
        if queue.full():
            log.error(
                "room %s has %d queued events; dropping %s",
                room_id,
                queue.qsize(),
                event["event_id"],
            )
            return
        queue.put_nowait(event)
        if room_id not in self._tasks:
            self._tasks[room_id] = asyncio.create_task(self._run(room_id, queue))

    async def _run(self, room_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        try:
            while not queue.empty():
                event = queue.get_nowait()
                try:
                    if await self._store.claim_event(event["event_id"]):
                        await self._handler(event)
                    else:
                        log.debug("event %s was handled before; skipped", event["event_id"])
                except Exception:
                    log.exception(
                        "error handling %s %s in %s",
                        event.get("type"),
                        event.get("event_id"),
                        room_id,
                    )
        finally:
            self._tasks.pop(room_id, None)
            if queue.empty():
                self._queues.pop(room_id, None)
            elif not self._closing:
                self._tasks[room_id] = asyncio.create_task(self._run(room_id, queue))

    async def drain(self, grace: float = 5.0) -> None:
        """Stop accepting events and wait (bounded) for queued ones to finish."""
        self._closing = True
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
