"""Typed exceptions used inside the bridge.

They are translated once, at the edge, into an exit status, a Matrix notice, a hangup reason,
a SIP response or an HTTP error body.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of all errors the bridge raises on purpose."""


class ConfigError(BridgeError):
    """The configuration is missing, unreadable or invalid.

    ``str()`` is a single line that names the file and the key.
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        prefix = f"{path}: " if path else ""
        where = f"{key}: " if key else ""
        super().__init__(f"{prefix}{where}{message}")


class DatabaseError(BridgeError):
    """The database could not be opened or upgraded."""


class CommandError(BridgeError):
    """A bot command was used wrongly; the message is shown to the user."""
