"""Rate and concurrency limits against floods and abuse (`bridge.limits`).

Concurrent calls are counted from the call manager's live calls (never drift); attempts and
messages per minute use a sliding one-minute window per Matrix user.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most `limit` events per `window` seconds per key."""

    def __init__(self, limit: int, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Count one event for key; False (and not counted) when over the limit."""
        now = self.clock()
        q = self._events.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) >= self.limit:
            return False
        q.append(now)
        if len(self._events) > 10000:  # forget idle keys
            for k in [k for k, v in self._events.items() if not v]:
                del self._events[k]
        return True
