"""-g writes a registration Synapse accepts, and stores the generated tokens in the config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from ruamel.yaml import YAML

from tests.conftest import Stack

REPO = Path(__file__).resolve().parents[2]


def run_bridge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_generate_writes_registration_and_tokens(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text((REPO / "config.example.yaml").read_text())
    res = run_bridge("-c", str(cfg), "-g", "-r", str(tmp_path / "reg.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    reg = YAML(typ="safe").load((tmp_path / "reg.yaml").read_text())
    conf = YAML(typ="safe").load(cfg.read_text())
    assert reg["id"] == "sip"
    assert reg["url"] == "http://127.0.0.1:29360"
    assert reg["sender_localpart"] == "sipbot"
    assert reg["rate_limited"] is False
    assert reg["protocols"] == ["m.protocol.pstn", "im.vector.protocol.pstn", "sip"]
    assert reg["as_token"] == conf["appservice"]["as_token"] != "generate"
    assert reg["hs_token"] == conf["appservice"]["hs_token"] != "generate"
    assert len(reg["as_token"]) >= 40 and reg["as_token"] != reg["hs_token"]
    users = [n["regex"] for n in reg["namespaces"]["users"]]
    assert all(n["exclusive"] for n in reg["namespaces"]["users"])
    assert re.fullmatch(users[0], "@sip_acme:example.org")
    assert re.fullmatch(users[0], "@sip_acme_101:example.org")
    assert not re.fullmatch(users[0], "@alice:example.org")
    assert re.fullmatch(reg["namespaces"]["aliases"][0]["regex"], "#sip_acme:example.org")
    # Comments survive; only the two token lines changed.
    before = (REPO / "config.example.yaml").read_text().splitlines()
    after = cfg.read_text().splitlines()
    changed = [a for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 3 and all(": generate" in c for c in changed)
    assert len(conf["appservice"]["provisioning_secret"]) >= 40
    # Running -g again keeps the tokens.
    res = run_bridge("-c", str(cfg), "-g", "-r", str(tmp_path / "reg2.yaml"), cwd=tmp_path)
    assert res.returncode == 0
    reg2 = YAML(typ="safe").load((tmp_path / "reg2.yaml").read_text())
    assert reg2["as_token"] == reg["as_token"]
    assert (tmp_path / "reg.yaml").stat().st_mode & 0o077 == 0


def test_custom_templates_in_namespaces(tmp_path: Path) -> None:
    text = (REPO / "config.example.yaml").read_text()
    text = text.replace('username_template: "sip_{name}"', 'username_template: "{name}.tel"')
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    res = run_bridge("-c", str(cfg), "-g", "-r", str(tmp_path / "reg.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    reg = YAML(typ="safe").load((tmp_path / "reg.yaml").read_text())
    regex = reg["namespaces"]["users"][0]["regex"]
    assert re.fullmatch(regex, "@acme.tel:example.org")
    assert not re.fullmatch(regex, "@acmeXtel:example.org")


def test_help_explains_every_flag(tmp_path: Path) -> None:
    res = run_bridge("--help", cwd=tmp_path)
    assert res.returncode == 0
    for flag in ("--config", "--generate-registration", "--registration", "--check-config"):
        assert flag in res.stdout


def test_synapse_accepts_the_generated_registration(stack: Stack) -> None:
    """Synapse started with it, and the as_token acts as the bot."""
    req = urllib.request.Request(
        stack.synapse.url + "/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {stack.tokens['as_token']}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.load(r)["user_id"] == "@sipbot:bridge.test"
