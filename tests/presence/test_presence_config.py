"""pbx.presence in the config: checked with a one-line error, mapped onto the company's PBX
link with its extensions, and watched by the company's home worker only."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.sip.from_bridge_config import sip_config

CFG = """\
homeserver: {address: "http://127.0.0.1:8008", domain: example.org}
appservice: {address: "http://127.0.0.1:29360", as_token: aaaaaaaaaaaa, hs_token: bbbbbbbbbbbb}
sip: {workers: 2}
companies:
  blf:
    name: A
    main_line: "1"
    pbx: {registrar: "sip:127.0.0.7:5070", username: u, password: p, presence: dialog}
    extensions: {"102": {name: Bo}, "101": {name: Al}}
  quiet:
    name: B
    main_line: "1"
    pbx: {mode: trunk, registrar: "sip:127.0.0.9", allowed_sources: [127.0.0.9]}
    extensions: {"201": {name: Cy}}
"""


def test_presence_config_reaches_the_links_and_the_home_worker(tmp_path: Path):
    p = tmp_path / "config.yaml"
    p.write_text(CFG)
    sip = sip_config(load_config(p))
    links = {link.company: link for link in sip.links}
    assert (links["blf"].presence, links["blf"].extensions) == ("dialog", ("101", "102"))
    assert (links["quiet"].presence, links["quiet"].extensions) == ("off", ())
    home = sip.home_worker("blf")
    assert sip.for_worker(home).watches == ("blf",)
    assert sip.for_worker(1 - home).watches == ()
    sip.validate()


@pytest.mark.parametrize(("value", "words"), [
    ("blf", "expected one of off, dialog, presence; got a string ('blf')"),
    ("true", "expected one of off, dialog, presence; got a boolean (True)"),
])
def test_presence_config_errors_are_one_line(tmp_path: Path, value: str, words: str):
    p = tmp_path / "config.yaml"
    p.write_text(CFG.replace("presence: dialog", f"presence: {value}"))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    text = str(err.value)
    assert "\n" not in text and "companies.blf.pbx.presence" in text and words in text, text
