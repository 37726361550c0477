"""Which link a request belongs to (and who gets 403), from raw SIP text."""

from __future__ import annotations

import pytest

from bridge.sip import routing
from bridge.sip.config import LinkConfig
from bridge.sip.sipmsg import parse_name_addr, parse_request, parse_uri, split_source

INVITE = (
    "INVITE sip:{ruri} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
    "f: \"Bob \\\"B\\\" Smith\" <sip:101@pbx.example;user=phone>;tag=abc\r\n"
    "t: <sip:{to}>\r\n"
    "i: call-1@pbx\r\n"
    "P-Asserted-Identity: <tel:+15551234>, \"Bob\" <sip:101@pbx.example>\r\n"
    "CSeq: 1 INVITE\r\n"
    "Subject: folded\r\n  line\r\n"
    "\r\n"
    "v=0\r\n"
)

REGISTRARS = {"pbx.example": ("198.51.100.7",)}


def fake_dns(host: str) -> tuple[str, ...]:
    if host not in REGISTRARS:
        raise OSError("Name or service not known")
    return REGISTRARS[host]


LINKS = routing.routes_of([
    LinkConfig(company="acme", mode="register", domain="pbx.example", username="matrix",
               password="p"),
    LinkConfig(company="bolt", mode="register", domain="bolt.example", username="matrix",
               password="p", allowed_sources=("192.0.2.0/24",)),
    LinkConfig(company="corp", mode="trunk", domain="corp.example",
               allowed_sources=("203.0.113.5",)),
], resolver=fake_dns)


def req(ruri: str, to: str = "x@bridge") -> object:
    r = parse_request(INVITE.format(ruri=ruri, to=to))
    assert r is not None
    return r


def test_parse_request_headers_and_name_addr() -> None:
    r = parse_request(INVITE.format(ruri="alice=example.org@10.0.0.2:5062;transport=udp",
                                    to="alice=example.org@bridge"))
    assert r is not None
    assert r.method == "INVITE"
    assert r.uri.user == "alice=example.org" and r.uri.port == 5062
    assert r.uri.params == {"transport": "udp"}
    frm = parse_name_addr(r.header("from") or "")
    assert frm.display == 'Bob "B" Smith' and frm.uri.user == "101"
    assert frm.params["tag"] == "abc"
    assert r.header("call-id") == "call-1@pbx"
    assert parse_name_addr(r.header("p-asserted-identity") or "").uri.user == "+15551234"
    assert r.header("subject") == "folded line"
    assert r.to_tag == ""
    assert parse_uri("sip:u%40x:pw@[::1]:5070;lr").host == "[::1]"
    assert parse_uri("sip:u%40x:pw@[::1]:5070;lr").user == "u@x"
    assert split_source("[::1]:5060") == ("::1", 5060)
    assert split_source("127.0.0.1:5062") == ("127.0.0.1", 5062)


def test_resolve_by_contact_param_then_trunk_source_then_account() -> None:
    r = req("matrix@10.0.0.2:5062;bridge-link=acme")
    assert routing.resolve(LINKS, r, "198.51.100.7") == "acme"  # from acme's registrar
    assert routing.resolve(LINKS, r, "198.51.100.8") is None  # a stranger naming the param
    r = req("matrix@10.0.0.2:5062;bridge-link=bolt")
    assert routing.resolve(LINKS, r, "198.51.100.7") is None  # bolt allows 192.0.2.0/24 only
    assert routing.resolve(LINKS, r, "192.0.2.9") == "bolt"
    r = req("alice=example.org@10.0.0.2")
    assert routing.resolve(LINKS, r, "203.0.113.5") == "corp"  # trunk by source
    assert routing.resolve(LINKS, r, "203.0.113.6") is None  # → 403
    r = req("someone@10.0.0.2", to="matrix@pbx.example")
    assert routing.resolve(LINKS, r, "198.51.100.7") == "acme"  # To is acme's account
    assert routing.resolve(LINKS, r, "192.0.2.1") is None  # ... but not from a stranger
    assert routing.resolve(LINKS, req("matrix@10.0.0.2"), "198.51.100.9") is None


def test_register_link_without_allowed_sources_admits_its_registrar_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def link(company: str, **kwargs: str) -> LinkConfig:
        kwargs.setdefault("domain", "pbx.example")
        return LinkConfig(company=company, mode="register", username="u", password="p",
                          **kwargs)  # type: ignore[arg-type]

    looked_up: list[str] = []

    def dns(host: str) -> tuple[str, ...]:
        looked_up.append(host)
        return fake_dns(host)

    routes = {r.company: r for r in routing.routes_of([
        link("by-domain"),
        link("by-uri", server_uri="sip:matrix@pbx.example:5070;transport=tcp",
             domain="other.example"),
        link("by-ip", server_uri="sip:203.0.113.9:5060"),
        link("by-ipv6", server_uri="sip:[2001:db8::5]:5060"),
        link("domain-port", domain="192.0.2.77:5080"),
        link("listed", allowed_sources=("10.0.0.0/8",)),
        link("unknown", domain="nowhere.invalid"),
    ], resolver=dns)}
    assert routes["by-domain"].admits("198.51.100.7")
    assert not routes["by-domain"].admits("127.0.0.1")
    assert routes["by-uri"].admits("198.51.100.7")  # server_uri's host, not the domain
    assert routes["by-ip"].admits("203.0.113.9") and not routes["by-ip"].admits("203.0.113.8")
    assert routes["by-ipv6"].admits("2001:db8::5")
    assert routes["domain-port"].admits("192.0.2.77")
    assert routes["listed"].admits("10.1.2.3") and not routes["listed"].admits("198.51.100.7")
    assert not any(routes["unknown"].admits(ip) for ip in ("127.0.0.1", "198.51.100.7", "::1"))
    # looked up once, when the routes were built; IP literals not at all
    assert sorted(looked_up) == ["nowhere.invalid", "pbx.example", "pbx.example"]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "unknown: cannot resolve the registrar nowhere.invalid" in errors[0]
