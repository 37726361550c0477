"""The directory of companies and extensions, and their Matrix identities.

Built from the config and the companies linked at run time (:mod:`.companies` keeps
``config.companies`` up to date and calls :meth:`Directory.refresh`).
A company's ghost is `username_template` with {name}=slug; an extension's ghost uses
{name}=slug_number. Characters a Matrix localpart cannot hold are escaped as =xx.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import CompanyConfig, Config
from .dialplan import matches
from .names import Company, Extension
from .permissions import at_least
from .registration import template_regex

_LOCALPART_SAFE = re.compile(r"[a-z0-9._/-]")


def escape_localpart(text: str) -> str:
    return "".join(c if _LOCALPART_SAFE.fullmatch(c) else f"={ord(c):02x}" for c in text.lower())


def unescape_localpart(text: str) -> str:
    return re.sub(r"=([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


@dataclass(frozen=True)
class Target:
    """What a ghost stands for: a company's main line or one of its extensions."""

    company: Company
    extension: str | None  # None: the main line

    @property
    def number(self) -> str:
        return self.extension or self.company.main_line

    @property
    def known(self) -> Extension | None:
        return self.company.extension(self.extension) if self.extension else None

    @property
    def listed(self) -> bool:
        """The main line or an extension listed in the config."""
        return self.extension is None or self.known is not None or (
            self.extension == self.company.main_line)

    @property
    def public(self) -> bool:
        return self.extension is None or (self.known is not None and self.known.public)


def may_dial(company: Company, number: str) -> bool:
    """A number beyond the listed ones that the company's dial_out patterns allow."""
    return matches(company.dial_out, number)


def allowed(target: Target, level: str) -> bool:
    """Whether a caller of this permission level may call or text this target."""
    if not at_least(level, "call"):
        return False
    if target.public:
        return True
    if not at_least(level, "user"):
        return False
    return target.listed or may_dial(target.company, target.number)


def _company(c: CompanyConfig) -> Company:
    return Company(
        slug=c.slug,
        name=c.name,
        description=c.description,
        main_line=c.main_line,
        extensions=tuple(
            Extension(number=e.number, name=e.name, public=e.public)
            for e in sorted(c.extensions.values(), key=lambda e: e.number)
        ),
        dial_out=tuple(c.dial_out),
    )


class Directory:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._domain = config.homeserver.domain
        self.companies: dict[str, Company] = {
            slug: _company(c) for slug, c in config.companies.items()
        }
        # the same patterns as the registration's namespaces, with the name captured
        self._ghost_re = re.compile(template_regex(
            config.bridge.username_template, "@", self._domain, capture=True))
        self._alias_re = re.compile(template_regex(
            config.bridge.alias_template, "#", self._domain, capture=True))

    def refresh(self) -> None:
        """Rebuild from ``config.companies`` after a company was linked, edited or unlinked."""
        self.companies = {slug: _company(c) for slug, c in self.config.companies.items()}

    def all(self) -> list[Company]:
        return [self.companies[s] for s in sorted(self.companies)]

    # --- Matrix identities ----------------------------------------------------------------
    def ghost_name(self, company: Company, extension: str | None = None) -> str:
        if extension is None:
            return company.slug
        return f"{company.slug}_{escape_localpart(extension)}"

    def ghost_mxid(self, company: Company, extension: str | None = None) -> str:
        local = self.config.bridge.username_template.format(
            name=self.ghost_name(company, extension)
        )
        return f"@{local}:{self._domain}"

    def alias(self, company: Company) -> str:
        return f"#{self.config.bridge.alias_template.format(name=company.slug)}:{self._domain}"

    def ghost_displayname(self, company: Company, extension: str | None = None) -> str:
        if extension is None:
            return company.name
        known = company.extension(extension)
        return self.config.bridge.extension_displayname_template.format(
            name=known.name if known else extension, company=company.name, extension=extension
        )

    def is_ghost_id(self, user_id: str) -> bool:
        """Any user ID in the bridge's ghost namespace (known company or not)."""
        return self._ghost_re.fullmatch(user_id) is not None

    def target_for_ghost(self, user_id: str) -> Target | None:
        """@sip_acme → Acme's main line; @sip_acme_101 → extension 101; None otherwise."""
        m = self._ghost_re.fullmatch(user_id)
        if not m:
            return None
        name = m.group(1)
        if name in self.companies:
            return Target(self.companies[name], None)
        slug, sep, ext = name.rpartition("_")
        while sep:
            if slug in self.companies:
                return Target(self.companies[slug], unescape_localpart(ext))
            slug, sep, rest = slug.rpartition("_")
            ext = f"{rest}_{ext}"
        return None

    def company_for_alias(self, alias: str) -> Company | None:
        m = self._alias_re.fullmatch(alias)
        return self.companies.get(m.group(1)) if m else None
