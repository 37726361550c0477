"""The bridge config mapped onto the pool: register links admit only their registrar;
``pbx.inbound_auth`` is checked key by key and reaches the links without showing its password."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.sip.config import InboundAuth
from bridge.sip.from_bridge_config import allowed_sources, sip_config

CFG = """\
homeserver: {address: "http://127.0.0.1:8008", domain: example.org}
appservice: {address: "http://127.0.0.1:29360", as_token: aaaaaaaaaaaa, hs_token: bbbbbbbbbbbb}
sip: {listen: {udp: "127.0.0.1:5060", tcp: "127.0.0.1:5060"}, media_addresses: [127.0.0.1],
      workers: 2}
companies:
  byip: {name: A, main_line: "1", pbx: {registrar: "sip:127.0.0.7:5070", username: u, password: p}}
  byname: {name: B, main_line: "1", pbx: {registrar: "sip:localhost", username: u, password: p}}
  listed: {name: C, main_line: "1", pbx: {registrar: "sip:127.0.0.8", username: u, password: p,
                                          allowed_sources: [10.0.0.0/8]}}
  trunk: {name: D, main_line: "1", pbx: {mode: trunk, registrar: "sip:127.0.0.9",
                                         allowed_sources: [127.0.0.9]}}
"""


def test_register_links_default_to_their_registrar(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text(CFG)
    cfg = load_config(p)
    assert allowed_sources(cfg.companies["byip"]) == ("127.0.0.7",)
    assert "127.0.0.1" in allowed_sources(cfg.companies["byname"])
    assert allowed_sources(cfg.companies["listed"]) == ("10.0.0.0/8",)
    assert allowed_sources(cfg.companies["trunk"]) == ("127.0.0.9",)
    sip = sip_config(cfg)
    assert sip.worker_count() == 2 and sip.media_addresses == ("127.0.0.1",)
    assert {link.company: link.allowed_sources for link in sip.links}["byip"] == ("127.0.0.7",)


AUTH_CFG = """\
homeserver: {address: "http://127.0.0.1:8008", domain: example.org}
appservice: {address: "http://127.0.0.1:29360", as_token: aaaaaaaaaaaa, hs_token: bbbbbbbbbbbb}
companies:
  plain: {name: A, main_line: "1", pbx: {mode: trunk, registrar: "sip:127.0.0.9",
                                         allowed_sources: [127.0.0.9]}}
  guarded:
    name: B
    main_line: "1"
    pbx:
      mode: trunk
      registrar: "sip:pbx.guarded.example"
      allowed_sources: [127.0.0.10]
      inbound_auth: {username: pbxuser, password: Inb0undPw}
  realmed:
    name: C
    main_line: "1"
    pbx:
      registrar: "sip:127.0.0.11"
      username: u
      password: p
      inbound_auth: {username: pbx2, password: Other-Pw, realm: bridge.example}
"""


def test_inbound_auth_is_mapped_with_its_realm_and_kept_secret(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text(AUTH_CFG)
    cfg = load_config(p)
    links = {link.company: link for link in sip_config(cfg).links}
    assert links["plain"].inbound_auth is None
    guarded = links["guarded"]
    assert guarded.inbound_auth == InboundAuth("pbxuser", "Inb0undPw", "pbx.guarded.example")
    assert guarded.inbound_realm == "pbx.guarded.example"  # the pbx domain by default
    assert links["realmed"].inbound_realm == "bridge.example"
    for secret in ("Inb0undPw", "Other-Pw"):
        assert secret in cfg.secrets()  # scrubbed from the logs like the other secrets
        assert secret not in repr(cfg) and secret not in repr(sip_config(cfg))
        assert secret not in repr(sip_config(cfg).for_worker(0))
    sip_config(cfg).validate()


@pytest.mark.parametrize(("inbound", "key", "words"), [
    ("{username: u, password: [a, b]}", "inbound_auth.password", "expected a string, got a list"),
    ("{username: u}", "inbound_auth.password", "required key is missing"),
    ("{password: p}", "inbound_auth.username", "required key is missing"),
    ("{username: u, password: p, relm: x}", "inbound_auth.relm", "unknown key"),
    ("{username: u, password: p, realm: 'a\"b'}", "inbound_auth.realm", "not valid"),
    ("yes please", "inbound_auth", "expected a mapping"),
])
def test_inbound_auth_errors_name_the_key_in_one_line(tmp_path: Path, inbound: str, key: str,
                                                      words: str) -> None:
    p = tmp_path / "config.yaml"
    p.write_text(AUTH_CFG.replace("{username: pbxuser, password: Inb0undPw}", inbound))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    text = str(err.value)
    assert "\n" not in text
    assert f"companies.guarded.pbx.{key}" in text and words in text, text
    assert "Inb0undPw" not in text
