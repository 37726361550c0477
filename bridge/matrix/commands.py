"""Bot commands: a registry, shlex parsing and usage lines.

Each command declares its usage and a one-line description; a wrong command or argument
count answers with the usage line. Later features register more commands here.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import CommandError

if TYPE_CHECKING:
    from ..context import BridgeContext


@dataclass
class CommandEvent:
    """What a command handler gets: who asked, where, and the parsed arguments."""

    ctx: BridgeContext
    sender: str
    room_id: str
    args: list[str]
    received_at: float = field(default_factory=time.monotonic)
    origin_ts: int | None = None


Handler = Callable[[CommandEvent], Awaitable[str]]


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    description: str
    handler: Handler
    min_args: int = 0
    max_args: int | None = 0


class CommandRegistry:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def add(self, command: Command) -> None:
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def all(self) -> list[Command]:
        return list(self._commands.values())

    async def run(self, evt_template: CommandEvent, text: str) -> str:
        """Parse and run one command line; returns the reply text (markdown-free)."""
        try:
            words = shlex.split(text)
        except ValueError as e:
            return f"Could not parse that: {e}. Use quotes around arguments with spaces."
        if not words:
            return self.help_text()
        name, args = words[0].lower(), words[1:]
        cmd = self._commands.get(name)
        if cmd is None:
            return f"Unknown command {name!r}. Send `help` for the list of commands."
        if len(args) < cmd.min_args or (cmd.max_args is not None and len(args) > cmd.max_args):
            return f"Usage: {cmd.usage}"
        evt_template.args = args
        try:
            return await cmd.handler(evt_template)
        except CommandError as e:
            return f"{e}\nUsage: {cmd.usage}"

    def help_text(self) -> str:
        lines = ["Commands:"]
        for c in self._commands.values():
            lines.append(f"• {c.usage} — {c.description}")
        return "\n".join(lines)


async def _ping(evt: CommandEvent) -> str:
    return "Pong! The bridge is running."


def builtin_commands(registry: CommandRegistry) -> None:
    async def _help(evt: CommandEvent) -> str:
        intro = (
            "I am the Matrix ⇄ SIP bridge bot: I connect Matrix users with companies' "
            "phone systems (PBX)."
        )
        prefix = evt.ctx.config.bridge.command_prefix
        outro = f"In this DM, send a command as it is; in other rooms start it with {prefix}."
        return f"{intro}\n{registry.help_text()}\n{outro}"

    registry.add(Command("help", "help", "show this help", _help))
    registry.add(Command("ping", "ping", "check that the bridge is alive", _ping))
