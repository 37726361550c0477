"""Free text → company or extension: the ranking rules, without a homeserver."""

from __future__ import annotations

from bridge.names import Company, Extension, fold, resolve, search

ACME = Company("acme", "Acme Corp", "Widgets since 1950", "100",
               (Extension("101", "Alice Martin", True), Extension("102", "Bob Stone", False)))
ACMELABS = Company("acmelabs", "Acme Labs", "", "200", ())
GLOBEX = Company("globex", "Globex Corporation", "", "0", ())
CAFE = Company("cafe-muller", "Café Müller", "Kaffee", "1", ())
ALL = [GLOBEX, ACME, CAFE, ACMELABS]


def keys(ms):  # type: ignore[no-untyped-def]
    return [(m.company.slug, m.extension, m.rule) for m in ms]


def test_fold() -> None:
    assert fold("  Café   MÜLLER ") == "cafe muller"


def test_exact_slug_and_name_win() -> None:
    assert keys(resolve("acme", ALL)) == [("acme", None, "exact")]
    assert keys(resolve("ACME corp", ALL)) == [("acme", None, "exact")]
    assert keys(resolve("cafe muller", ALL)) == [("cafe-muller", None, "exact")]


def test_unique_prefix() -> None:
    assert keys(resolve("glo", ALL)) == [("globex", None, "prefix")]
    assert keys(resolve("corpor", ALL)) == [("globex", None, "prefix")]  # a word of the name
    assert resolve("acm", ALL) == []  # Acme Corp and Acme Labs: not unique
    assert keys(resolve("acm", [ACME, GLOBEX])) == [("acme", None, "prefix")]
    assert keys(resolve("caf", ALL)) == [("cafe-muller", None, "prefix")]


def test_company_and_extension() -> None:
    assert keys(resolve("acme 101", ALL)) == [("acme", "101", "company+ext")]
    assert keys(resolve("Acme Corp 102", ALL)) == [("acme", "102", "company+ext")]
    assert keys(resolve("acme 100", ALL)) == [("acme", None, "company+ext")]  # the main line
    assert resolve("acme 109", ALL) == []  # not configured, no dial-out
    assert keys(resolve("glob 0", ALL)) == [("globex", None, "company+ext")]


def test_bare_extension_needs_a_default_company() -> None:
    assert resolve("101", ALL) == []
    assert keys(resolve("101", ALL, default_company="acme")) == [("acme", "101", "default-company")]
    assert resolve("555", ALL, default_company="acme") == []


def test_numbers_only_when_allowed() -> None:
    def may_dial(c: Company, number: str) -> bool:
        return c.slug == "acme" and number.startswith("0")

    assert keys(resolve("acme 0123", ALL, may_dial=may_dial)) == [("acme", "0123", "company+ext+dial")]
    assert resolve("globex 0123", ALL, may_dial=may_dial) == []


def test_unknown_and_silly_text() -> None:
    for text in ("", "   ", "initech", "x" * 500, "😀", "acme 1 2 3"):
        assert resolve(text, ALL, default_company="acme") == []


def test_deterministic_order() -> None:
    assert [m.key for m in search("acme", ALL)] == [("acme", ""), ("acme", "101"), ("acmelabs", "")]
    assert [m.key for m in search("acme", list(reversed(ALL)))] == [("acme", ""), ("acme", "101"), ("acmelabs", "")]


def test_search_finds_public_extensions_only() -> None:
    assert keys(search("alice", ALL)) == [("acme", "101", "search")]
    assert search("bob", ALL) == []
    assert keys(search("bob", ALL, include_private=True)) == [("acme", "102", "search")]
    assert keys(search("acme corp", ALL)) == [("acme", None, "search"), ("acme", "101", "search")]
    assert keys(search("kaffee", ALL)) == [("cafe-muller", None, "search")]
