"""Sending raw event contents (built as dicts, e.g. by call_events) as a given user."""

from __future__ import annotations

from typing import Any

from mautrix.appservice import IntentAPI
from mautrix.types import EventType, RoomID


async def send_raw(intent: IntentAPI, room_id: str, event_type: str,
                   content: dict[str, Any]) -> str:
    etype = EventType.find(event_type, EventType.Class.MESSAGE)
    return str(await intent.send_message_event(RoomID(room_id), etype, content))  # type: ignore[arg-type]
