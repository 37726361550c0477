"""Resolving free text to a company or extension, like a domain name to an address.

Used by Element's dial pad (thirdparty user lookup), the `search` and `call` commands and
the thirdparty location lookup. Pure functions over the directory of companies; results are
deterministic, ranked, and case- and accent-insensitive.

Order (the first rule that yields anything wins):
1. an exact company slug or name ("acme", "Acme Corp");
2. a unique company prefix ("acm"; by slug, name or any word of the name);
3. "company extension" ("acme 101", "Acme Corp 101");
4. a bare extension of the default company ("101");
5. a number the caller may dial (handed to the caller-supplied `may_dial`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass


def fold(text: str) -> str:
    """Case- and accent-insensitive form: 'Café Müller' → 'cafe muller'."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"\s+", " ", stripped.casefold()).strip()


@dataclass(frozen=True)
class Extension:
    number: str
    name: str
    public: bool


@dataclass(frozen=True)
class Company:
    slug: str
    name: str
    description: str
    main_line: str
    extensions: tuple[Extension, ...]
    dial_out: tuple[str, ...] = ()

    def extension(self, number: str) -> Extension | None:
        for e in self.extensions:
            if e.number == number:
                return e
        return None


@dataclass(frozen=True)
class Match:
    """One result: a company main line (extension None), an extension, or a dialled number."""

    company: Company
    extension: str | None
    rule: str
    # For an extension known to the config: its entry; None for a number outside it.
    known: Extension | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.company.slug, self.extension or "")


MayDial = Callable[[Company, str], bool]


def _split_company_ext(text: str) -> tuple[str, str] | None:
    m = re.fullmatch(r"(.+?)[\s/#:-]+([0-9*#+]{1,32})", text)
    return (m.group(1).strip(), m.group(2)) if m else None


def _exact(companies: Iterable[Company], text: str) -> list[Company]:
    f = fold(text)
    return [c for c in companies if f in (fold(c.slug), fold(c.name))]


def _prefix(companies: Iterable[Company], text: str) -> list[Company]:
    f = fold(text)
    if not f:
        return []
    out = []
    for c in companies:
        words = fold(c.name).split(" ")
        if (
            fold(c.slug).startswith(f)
            or fold(c.name).startswith(f)
            or any(w.startswith(f) for w in words)
        ):
            out.append(c)
    return out


def _ext_match(c: Company, number: str, rule: str, may_dial: MayDial | None) -> Match | None:
    known = c.extension(number)
    if known is not None or number == c.main_line:
        return Match(c, None if number == c.main_line else number, rule, known)
    if may_dial is not None and may_dial(c, number):
        return Match(c, number, rule + "+dial", None)
    return None


def resolve(
    text: str,
    companies: Iterable[Company],
    *,
    default_company: str | None = None,
    may_dial: MayDial | None = None,
    limit: int = 10,
) -> list[Match]:
    """All matches of the first rule that yields any, ranked; [] when nothing matches."""
    comps = sorted(companies, key=lambda c: c.slug)
    text = text.strip()
    if not text or len(text) > 200:
        return []
    exact = _exact(comps, text)
    if exact:
        return [Match(c, None, "exact") for c in exact][:limit]
    prefixed = _prefix(comps, text)
    if len(prefixed) == 1:
        return [Match(prefixed[0], None, "prefix")]
    split = _split_company_ext(text)
    if split is not None:
        name, number = split
        owners = _exact(comps, name) or _unique(_prefix(comps, name))
        out = [m for c in owners if (m := _ext_match(c, number, "company+ext", may_dial))]
        if out:
            return out[:limit]
    if re.fullmatch(r"[0-9*#+]{1,32}", text) and default_company is not None:
        for c in comps:
            if c.slug == default_company:
                m = _ext_match(c, text, "default-company", may_dial)
                return [m] if m else []
    return []


def _unique(items: list[Company]) -> list[Company]:
    return items if len(items) == 1 else []


def search(
    text: str, companies: Iterable[Company], limit: int = 20, include_private: bool = False
) -> list[Match]:
    """Looser than resolve, for the `search` command: companies whose slug, name or
    description contains the text (with their extensions), and extensions whose name does.
    Only public extensions unless include_private."""
    f = fold(text)
    if not f:
        return []
    out: list[Match] = []
    for c in sorted(companies, key=lambda c: c.slug):
        hay = " ".join((fold(c.slug), fold(c.name), fold(c.description)))
        company_hit = f in hay
        if company_hit:
            out.append(Match(c, None, "search"))
        for e in c.extensions:
            if not (e.public or include_private):
                continue
            if company_hit or f in fold(e.name) or f == e.number:
                out.append(Match(c, e.number, "search", e))
    ranked = sorted(out, key=lambda m: (not fold(m.company.name).startswith(f), m.key))
    return ranked[:limit]
