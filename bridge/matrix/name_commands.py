"""Commands that find and reach companies by name: search, call, default-company."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mautrix.errors import MatrixError

from ..directory import Target, allowed, may_dial
from ..errors import CommandError
from ..names import Match, resolve, search
from ..permissions import at_least, level_for
from .commands import Command, CommandEvent, CommandRegistry

if TYPE_CHECKING:
    from ..context import BridgeContext


def _may_see(ctx: BridgeContext, user_id: str, m: Match) -> bool:
    level = level_for(user_id, ctx.config.bridge.permissions)
    return allowed(Target(m.company, m.extension), level)


def _describe(ctx: BridgeContext, m: Match) -> str:
    d = ctx.directory
    return f"{d.ghost_displayname(m.company, m.extension)} — {d.ghost_mxid(m.company, m.extension)}"


async def _search(evt: CommandEvent) -> str:
    ctx = evt.ctx
    text = " ".join(evt.args)
    found = [
        m
        for m in search(text, ctx.directory.all(), include_private=True)
        if _may_see(ctx, evt.sender, m)
    ]
    if not found:
        return f"Nothing matches {text!r}."
    lines = [f"{len(found)} match(es) for {text!r}:"] + [f"• {_describe(ctx, m)}" for m in found]
    return "\n".join(lines)


async def _call(evt: CommandEvent) -> str:
    ctx = evt.ctx
    text = " ".join(evt.args)
    if not at_least(level_for(evt.sender, ctx.config.bridge.permissions), "call"):
        return "You are not allowed to call through this bridge."
    default = await ctx.default_company(evt.sender)
    found = resolve(text, ctx.directory.all(), default_company=default, may_dial=may_dial)
    allowed = [m for m in found if _may_see(ctx, evt.sender, m)]
    if not allowed:
        if found:
            return f"You may not call {text!r}."
        return f"I know no company or extension called {text!r}. Try: search {text}"
    if len(allowed) > 1:
        options = "\n".join(f"• {_describe(ctx, m)}" for m in allowed)
        return f"{text!r} is ambiguous:\n{options}"
    m = allowed[0]
    ghost = ctx.directory.ghost_mxid(m.company, m.extension)
    name = ctx.directory.ghost_displayname(m.company, m.extension)
    try:
        _room, created = await ctx.dms.get_or_create(
            evt.sender, ghost, f"This is {name}. Press the call button to call."
        )
    except MatrixError as e:
        raise CommandError(f"Could not open a chat with {name}: {e}") from None
    verb = "I invited you to" if created else "You already have"
    return f"{verb} a chat with {name} ({ghost}). Press the call button there to call."


async def _default_company(evt: CommandEvent) -> str:
    ctx = evt.ctx
    if not evt.args:
        current = await ctx.default_company(evt.sender)
        return f"Your default company is {current}." if current else "You have no default company."
    if not at_least(level_for(evt.sender, ctx.config.bridge.permissions), "user"):
        return "Setting a default company needs the 'user' permission level."
    slug = evt.args[0].lower()
    if slug not in ctx.directory.companies:
        found = resolve(evt.args[0], ctx.directory.all())
        if len(found) != 1 or found[0].extension is not None:
            raise CommandError(f"No company called {evt.args[0]!r}.")
        slug = found[0].company.slug
    await ctx.db.execute(
        "INSERT INTO user_setting (user_id, default_company) VALUES ($1, $2) "
        "ON CONFLICT (user_id) DO UPDATE SET default_company=excluded.default_company",
        evt.sender,
        slug,
    )
    name = ctx.directory.companies[slug].name
    return f"Your default company is now {name}: `call 101` rings its extension 101."


def name_commands(registry: CommandRegistry) -> None:
    registry.add(
        Command(
            "search",
            "search TEXT",
            "find companies and public extensions",
            _search,
            min_args=1,
            max_args=None,
        )
    )
    registry.add(
        Command(
            "call",
            "call TARGET",
            'open a chat with a company or extension to call it (e.g. call acme, call "acme 101")',
            _call,
            min_args=1,
            max_args=None,
        )
    )
    registry.add(
        Command(
            "default-company",
            "default-company [COMPANY]",
            "show or set the company a bare extension number means",
            _default_company,
            min_args=0,
            max_args=1,
        )
    )
