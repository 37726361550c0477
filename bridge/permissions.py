"""Permission levels from `bridge.permissions`: the most specific key wins.

Keys are a full user ID, a server name, or "*". Levels, each including the ones before:
none < call < user < admin.
"""

from __future__ import annotations

from collections.abc import Mapping

LEVELS = ("none", "call", "user", "admin")


def level_for(user_id: str, permissions: Mapping[str, str]) -> str:
    if user_id in permissions:
        return permissions[user_id]
    server = user_id.split(":", 1)[1] if ":" in user_id else ""
    if server in permissions:
        return permissions[server]
    return permissions.get("*", "none")


def at_least(level: str, needed: str) -> bool:
    return LEVELS.index(level) >= LEVELS.index(needed)
