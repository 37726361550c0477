"""Commands about the bridge's state: whoami, companies, status, calls, hangup."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..permissions import at_least, level_for
from .commands import Command, CommandEvent, CommandRegistry

if TYPE_CHECKING:
    from ..context import BridgeContext


def _level(evt: CommandEvent) -> str:
    return level_for(evt.sender, evt.ctx.config.bridge.permissions)


async def _whoami(evt: CommandEvent) -> str:
    return f"You are {evt.sender}; your permission level here is '{_level(evt)}'."


def _link_text(ctx: BridgeContext, slug: str) -> str:
    cfg = ctx.config.companies[slug]
    if cfg.pbx.mode == "trunk":
        return "trunk"
    state = ctx.pool.link_states().get(slug) if ctx.pool is not None else None
    if state is None:
        return "unknown"
    if state.state == "failed":
        return f"failed ({state.status} {state.reason}; retry in {state.retry_in_s:.0f} s)"
    return state.state


async def _companies(evt: CommandEvent) -> str:
    ctx = evt.ctx
    lines = [f"{len(ctx.directory.companies)} companies:"]
    for c in ctx.directory.all():
        line = (f"• {c.name} ({c.slug}) — {ctx.directory.ghost_mxid(c)}, main line {c.main_line}, "
                f"{len(c.extensions)} extension(s)")
        if at_least(_level(evt), "admin"):
            line += f", PBX link: {_link_text(ctx, c.slug)}"
        lines.append(line)
    return "\n".join(lines)


async def _status(evt: CommandEvent) -> str:
    ctx = evt.ctx
    admin = at_least(_level(evt), "admin")
    lines: list[str] = []
    if admin and ctx.pool is not None:
        lines.append("PBX links:")
        lines += [f"• {slug}: {_link_text(ctx, slug)}" for slug in sorted(ctx.config.companies)]
        lines.append("Workers:")
        for w in ctx.pool.workers():
            lines.append(f"• worker {w.index} (pid {w.pid}): {'alive' if w.alive else 'down'}, "
                         f"{w.calls}/{w.max_calls} calls, {w.restarts} restart(s)")
    calls = [c for c in (ctx.calls.calls.values() if ctx.calls else []) if not c.ended]
    if not admin:
        calls = [c for c in calls if c.user_id == evt.sender]
    lines.append(f"Active calls: {len(calls)}")
    for c in calls:
        state = "connected" if c.answered else "ringing"
        who = f"{c.user_id} ⇄ " if admin else ""
        lines.append(f"• {who}{c.name} ({c.direction}, {state})")
    return "\n".join(lines)


async def _calls(evt: CommandEvent) -> str:
    ctx = evt.ctx
    try:
        limit = min(50, max(1, int(evt.args[0]))) if evt.args else 10
    except ValueError:
        return "Usage: calls [N]"
    admin = at_least(_level(evt), "admin")
    if admin:
        rows = await ctx.db.fetch(
            "SELECT * FROM call_record ORDER BY invited_at DESC LIMIT $1", limit)
    else:
        rows = await ctx.db.fetch(
            "SELECT * FROM call_record WHERE matrix_user=$1 ORDER BY invited_at DESC LIMIT $2",
            evt.sender, limit)
    if not rows:
        return "No calls yet."
    lines = [f"Last {len(rows)} call(s):"]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["invited_at"] / 1000))
        dur = ""
        if r["answered_at"] and r["ended_at"]:
            secs = (r["ended_at"] - r["answered_at"]) // 1000
            dur = f", {secs // 60}:{secs % 60:02d}"
        who = f"{r['matrix_user']} " if admin else ""
        arrow = "→" if r["direction"] == "outbound" else "←"
        lines.append(f"• {when} UTC {who}{arrow} {r['company']} {r['extension']}: "
                     f"{r['outcome'] or 'in progress'}{dur}")
    return "\n".join(lines)


async def _hangup(evt: CommandEvent) -> str:
    ctx = evt.ctx
    if ctx.calls is None:
        return "No calls here."
    ended = await ctx.calls.hangup_in_room(evt.room_id, evt.sender)
    return "Hung up." if ended else "There is no active call of yours in this room."


def status_commands(registry: CommandRegistry) -> None:
    registry.add(Command("whoami", "whoami", "show your Matrix ID and permission level", _whoami))
    registry.add(Command("companies", "companies", "list the companies you can reach",
                         _companies))
    registry.add(Command("status", "status", "PBX links, workers and active calls (admins see "
                         "all, users their own calls)", _status))
    registry.add(Command("calls", "calls [N]", "your last N calls (admins: everyone's)", _calls,
                         max_args=1))
    registry.add(Command("hangup", "hangup", "end your active call in this room "
                         "(send `!sip hangup` in the chat with the company)", _hangup))
