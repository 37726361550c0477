"""Admin commands mapping PBX numbers to Matrix users at run time (stored in the database,
used at once for inbound calls and messages; numbers from the config file are read-only)."""

from __future__ import annotations

import re
import time

from ..dialplan import matches
from ..errors import CommandError
from ..permissions import at_least, level_for
from .commands import Command, CommandEvent, CommandRegistry

_NUMBER = re.compile(r"[0-9*#+]{1,32}")
_USER = re.compile(r"@[a-z0-9._=/+-]+:[A-Za-z0-9.-]+(:\d+)?")


def _admin(evt: CommandEvent) -> None:
    if not at_least(level_for(evt.sender, evt.ctx.config.bridge.permissions), "admin"):
        raise CommandError("This command needs the 'admin' permission level.")


def _company(evt: CommandEvent, slug: str) -> str:
    if slug not in evt.ctx.directory.companies:
        raise CommandError(f"No company {slug!r}.")
    return slug


async def _map(evt: CommandEvent) -> str:
    _admin(evt)
    slug, number, user = evt.args
    _company(evt, slug)
    if not _NUMBER.fullmatch(number):
        raise CommandError(f"{number!r} is not a phone number.")
    if not _USER.fullmatch(user):
        raise CommandError(f"{user!r} is not a Matrix user ID.")
    if number in evt.ctx.config.companies[slug].numbers:
        raise CommandError(f"{slug} {number} is mapped in the config file; change it there.")
    await evt.ctx.db.execute(
        "INSERT INTO number_map (company, number, user_id, created_by, created_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (company, number) DO UPDATE SET"
        " user_id=excluded.user_id, created_by=excluded.created_by,"
        " created_at=excluded.created_at",
        slug, number, user, evt.sender, int(time.time() * 1000),
    )
    return f"{slug} {number} now rings {user}."


async def _unmap(evt: CommandEvent) -> str:
    _admin(evt)
    slug, number = evt.args
    _company(evt, slug)
    row = await evt.ctx.db.fetchval(
        "SELECT user_id FROM number_map WHERE company=$1 AND number=$2", slug, number)
    if row is None:
        raise CommandError(f"{slug} {number} is not mapped (at run time).")
    await evt.ctx.db.execute("DELETE FROM number_map WHERE company=$1 AND number=$2",
                             slug, number)
    return f"{slug} {number} no longer rings {row}."


async def _numbers(evt: CommandEvent) -> str:
    _admin(evt)
    lines = []
    for slug, cfg in sorted(evt.ctx.config.companies.items()):
        for number, user in sorted(cfg.numbers.items()):
            lines.append(f"• {slug} {number} → {user} (config)")
    for row in await evt.ctx.db.fetch(
            "SELECT company, number, user_id, created_by FROM number_map ORDER BY company, number"):
        lines.append(f"• {row['company']} {row['number']} → {row['user_id']} "
                     f"(set by {row['created_by']})")
    return "Mapped numbers:\n" + "\n".join(lines) if lines else "No numbers are mapped."


async def _claim(evt: CommandEvent) -> str:
    slug, number = evt.args
    _company(evt, slug)
    if not at_least(level_for(evt.sender, evt.ctx.config.bridge.permissions), "user"):
        raise CommandError("Claiming a number needs the 'user' permission level.")
    cfg = evt.ctx.config.companies[slug]
    if not (_NUMBER.fullmatch(number) and matches(cfg.claimable_numbers, number)) \
            or number in cfg.numbers:
        raise CommandError(f"{slug} does not let users claim {number!r}.")
    owner = await evt.ctx.db.fetchval(
        "SELECT user_id FROM number_map WHERE company=$1 AND number=$2", slug, number)
    if owner is not None and owner != evt.sender:
        raise CommandError(f"{slug} {number} is taken.")
    await evt.ctx.db.execute(
        "INSERT INTO number_map (company, number, user_id, created_by, created_at)"
        " VALUES ($1, $2, $3, $3, $4) ON CONFLICT (company, number) DO NOTHING",
        slug, number, evt.sender, int(time.time() * 1000),
    )
    return f"{slug} {number} is yours: calls and texts to it reach you."


def number_commands(registry: CommandRegistry) -> None:
    registry.add(Command("claim", "claim COMPANY NUMBER",
                         "take a personal number where the company allows it", _claim,
                         min_args=2, max_args=2))
    registry.add(Command("map", "map COMPANY NUMBER @user:server",
                         "admins: calls and texts to NUMBER at COMPANY reach that user", _map,
                         min_args=3, max_args=3))
    registry.add(Command("unmap", "unmap COMPANY NUMBER", "admins: remove a mapping", _unmap,
                         min_args=2, max_args=2))
    registry.add(Command("numbers", "numbers", "admins: list mapped numbers", _numbers))
