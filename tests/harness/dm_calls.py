"""What many end-to-end tests do as a Matrix user: open a DM with a ghost, wait for a notice
there, and hold a call that the bridge connected."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.harness.call_client import CallClient, CallOptions, CallState
from tests.harness.matrix_user import MatrixUser


async def dm_with(user: MatrixUser, ghost: str) -> str:
    """A new DM with ``ghost``, once the ghost has joined it."""
    room = await user.create_dm(ghost)
    await user.wait_for(lambda e: e["room_id"] == room and e.get("state_key") == ghost
                        and e["content"].get("membership") == "join", timeout=20)
    return room


async def notice_in(user: MatrixUser, room: str, text: str,
                    timeout: float = 15) -> dict[str, Any]:
    """The first event in ``room`` whose body contains ``text``."""
    return await user.wait_for(lambda e: e["room_id"] == room and text in
                               e.get("content", {}).get("body", ""), timeout=timeout)


@contextlib.asynccontextmanager
async def connected_call(user: MatrixUser, ghost: str | None = None, *, room: str | None = None,
                         options: CallOptions | None = None, tone_hz: float | None = None,
                         timeout: float = 30) -> AsyncIterator[tuple[CallClient, str]]:
    """Call ``ghost`` (in a new DM) or in ``room``, playing ``tone_hz`` if given, and yield
    (client, room) once CONNECTED; the client is closed on the way out."""
    if room is None:
        if ghost is None:
            raise ValueError("a ghost or a room to call in")
        room = await dm_with(user, ghost)
    client = CallClient(user.transport(room), options or CallOptions())
    try:
        if tone_hz is not None:
            client.play_tone(tone_hz)
        await client.place_call()
        await client.wait_for_state(CallState.CONNECTED, timeout=timeout)
        yield client, room
    finally:
        await client.close()
