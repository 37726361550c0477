"""An in-memory stand-in for a Matrix room, for unit tests of the call client.

This is a mock of the Matrix transport (the client-server API is not involved): every
member's :meth:`MemoryTransport.send` appends an event to the room's timeline and every
other member's :meth:`MemoryTransport.events` yields it, in order, with the fields a sync
response gives (``type``, ``content``, ``sender``, ``event_id``, ``room_id``,
``origin_server_ts``).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

_ids = itertools.count(1)


class MemoryRoom:
    def __init__(self, room_id: str = "!memory:test") -> None:
        self.room_id = room_id
        self.timeline: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    def join(self, user_id: str) -> MemoryTransport:
        return MemoryTransport(self, user_id)

    async def append(self, sender: str, event_type: str, content: dict[str, Any]) -> str:
        event_id = f"$ev{next(_ids)}"
        event = {
            "type": event_type,
            "content": copy.deepcopy(content),
            "sender": sender,
            "event_id": event_id,
            "room_id": self.room_id,
            "origin_server_ts": int(time.time() * 1000),
        }
        async with self._changed:
            self.timeline.append(event)
            self._changed.notify_all()
        return event_id

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.timeline if e["type"] == event_type]


class MemoryTransport:
    """One member's view of a :class:`MemoryRoom` (the RoomTransport protocol)."""

    def __init__(self, room: MemoryRoom, user_id: str) -> None:
        self.room = room
        self.user_id = user_id
        self._cursor = len(room.timeline)

    async def send(self, event_type: str, content: dict[str, Any]) -> str:
        return await self.room.append(self.user_id, event_type, content)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            async with self.room._changed:
                await self.room._changed.wait_for(lambda: len(self.room.timeline) > self._cursor)
                new = self.room.timeline[self._cursor :]
                self._cursor = len(self.room.timeline)
            for event in new:
                if event["sender"] != self.user_id:
                    yield copy.deepcopy(event)
