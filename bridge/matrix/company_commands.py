"""Admin commands that link, edit and unlink companies and their extensions at run time.

Settings are given as KEY=VALUE words with the config file's key names, dotted for nested
keys (``pbx.registrar=sip:pbx.example.com``); lists are comma-separated
(``pbx.allowed_sources=192.0.2.10,198.51.100.0/24``); ``KEY=`` (empty) removes an optional key
in ``edit``. Values with spaces go in quotes: ``name="Pizza Roma"``.
"""

from __future__ import annotations

from typing import Any

from ..companies import CompanyError
from ..errors import CommandError
from ..permissions import at_least, level_for
from .commands import Command, CommandEvent, CommandRegistry

LIST_KEYS = frozenset({"allowed_sources", "dial_out", "claimable_numbers"})
BOOL_KEYS = frozenset({"tls_verify", "public"})
INT_KEYS = frozenset({"register_expires", "max_calls"})
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _admin(evt: CommandEvent) -> None:
    if not at_least(level_for(evt.sender, evt.ctx.config.bridge.permissions), "admin"):
        raise CommandError("This command needs the 'admin' permission level.")


def _value(key: str, text: str, removing: bool) -> Any:
    if text == "" and removing:
        return None
    if key in LIST_KEYS:
        return [part.strip() for part in text.split(",") if part.strip()]
    if key in BOOL_KEYS:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise CommandError(f"{key} must be true or false, not {text!r}.")
    if key in INT_KEYS:
        try:
            return int(text)
        except ValueError:
            raise CommandError(f"{key} must be a number, not {text!r}.") from None
    return text


def assignments(words: list[str], *, removing: bool = False) -> dict[str, Any]:
    """KEY=VALUE words as the nested structure of a ``companies.<slug>`` entry."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise CommandError(f"{word!r} is not KEY=VALUE.")
        path = key.split(".")
        if any(not part for part in path):
            raise CommandError(f"{key!r} is not a valid key.")
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CommandError(f"{key!r} is given twice.")
            node = child
        node[path[-1]] = _value(path[-1], text, removing)
    return out


def _refused(e: CompanyError) -> CommandError:
    return CommandError(str(e))


def _summary(evt: CommandEvent, slug: str) -> str:
    d = evt.ctx.directory
    company = d.companies[slug]
    cfg = evt.ctx.config.companies[slug]
    return (f"{company.name} ({slug}): call {d.ghost_mxid(company)} or find {d.alias(company)}; "
            f"PBX link: {cfg.pbx.mode} to {cfg.pbx.registrar}; "
            f"{len(company.extensions)} extension(s).")


async def _link(evt: CommandEvent) -> str:
    _admin(evt)
    slug, *words = evt.args
    try:
        await evt.ctx.companies.create(slug, assignments(words), evt.sender)
    except CompanyError as e:
        raise _refused(e) from None
    return "Linked " + _summary(evt, slug)


async def _edit(evt: CommandEvent) -> str:
    _admin(evt)
    slug, *words = evt.args
    try:
        await evt.ctx.companies.update(slug, assignments(words, removing=True), evt.sender)
    except CompanyError as e:
        raise _refused(e) from None
    return "Changed " + _summary(evt, slug)


async def _unlink(evt: CommandEvent) -> str:
    _admin(evt)
    (slug,) = evt.args
    try:
        await evt.ctx.companies.delete(slug, evt.sender)
    except CompanyError as e:
        raise _refused(e) from None
    return f"Unlinked {slug}: its PBX link is gone and its ghosts say it is no longer reachable."


async def _extension(evt: CommandEvent) -> str:
    _admin(evt)
    slug, number, name, *rest = evt.args
    if rest not in ([], ["public"], ["private"]):
        raise CommandError("The last word, if any, must be 'public' or 'private'.")
    try:
        await evt.ctx.companies.set_extension(slug, number, name, rest == ["public"],
                                              evt.sender)
    except CompanyError as e:
        raise _refused(e) from None
    d = evt.ctx.directory
    company = d.companies[slug]
    return (f"{d.ghost_displayname(company, number)} is {d.ghost_mxid(company, number)}"
            f"{' (public)' if rest == ['public'] else ''}.")


async def _remove_extension(evt: CommandEvent) -> str:
    _admin(evt)
    slug, number = evt.args
    try:
        await evt.ctx.companies.remove_extension(slug, number, evt.sender)
    except CompanyError as e:
        raise _refused(e) from None
    return f"Removed extension {number} from {slug}."


def company_commands(registry: CommandRegistry) -> None:
    registry.add(Command(
        "link", 'link COMPANY name="NAME" main_line=NUMBER pbx.registrar=sip:HOST '
        "[pbx.mode=trunk pbx.allowed_sources=IP,...] [pbx.username=U pbx.password=P] [KEY=VALUE…]",
        "admins: link a company at run time (keys as in the config file)", _link,
        min_args=1, max_args=None))
    registry.add(Command(
        "edit", "edit COMPANY KEY=VALUE… (KEY= removes it)",
        "admins: change a company linked at run time", _edit, min_args=2, max_args=None))
    registry.add(Command("unlink", "unlink COMPANY",
                         "admins: unlink a company linked at run time", _unlink,
                         min_args=1, max_args=1))
    registry.add(Command(
        "extension", 'extension COMPANY NUMBER "NAME" [public]',
        "admins: add or rename an extension of a company linked at run time", _extension,
        min_args=3, max_args=4))
    registry.add(Command(
        "remove-extension", "remove-extension COMPANY NUMBER",
        "admins: remove an extension of a company linked at run time", _remove_extension,
        min_args=2, max_args=2))
