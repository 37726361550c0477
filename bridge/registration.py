"""`-g`: generate the appservice registration and store fresh tokens in the config.

This is the only place that rewrites the user's config file. It round-trips the YAML with
ruamel so comments and key order stay as the admin wrote them.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from .config import GENERATE, Config, load_config
from .errors import ConfigError

PROTOCOLS = ["m.protocol.pstn", "im.vector.protocol.pstn", "sip"]


def new_token() -> str:
    return secrets.token_urlsafe(48)


def template_regex(template: str, sigil: str, domain: str, *, capture: bool = False) -> str:
    """`sip_{name}` → `@sip_.+:example\\.org` (everything but {name} escaped); with
    ``capture`` the name is group 1 (the directory reads it back)."""
    prefix, _, suffix = template.partition("{name}")
    name = "(.+)" if capture else ".+"
    return f"{sigil}{re.escape(prefix)}{name}{re.escape(suffix)}:{re.escape(domain)}"


def registration_for(cfg: Config) -> dict[str, Any]:
    dom = cfg.homeserver.domain
    return {
        "id": cfg.appservice.id,
        "url": cfg.appservice.address,
        "as_token": cfg.appservice.as_token,
        "hs_token": cfg.appservice.hs_token,
        "sender_localpart": cfg.appservice.bot_username,
        "rate_limited": False,
        "namespaces": {
            "users": [
                {
                    "exclusive": True,
                    "regex": template_regex(cfg.bridge.username_template, "@", dom),
                },
                {
                    "exclusive": True,
                    "regex": f"@{re.escape(cfg.appservice.bot_username)}:{re.escape(dom)}",
                },
            ],
            "aliases": [
                {
                    "exclusive": True,
                    "regex": template_regex(cfg.bridge.alias_template, "#", dom),
                }
            ],
            "rooms": [],
        },
        "protocols": list(PROTOCOLS),
    }


def _atomic_write(path: Path, write: Any, mode: int | None = None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        if mode is not None:
            os.chmod(tmp, mode)
        elif path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate(config_path: str, registration_path: str) -> Config:
    """Fill `generate` tokens in the config, then write the registration file.

    Existing tokens are kept, so running -g again writes the same registration.
    """
    cpath = Path(config_path).resolve()
    load_config(cpath, allow_generate=True)  # validate everything first; raises ConfigError
    yaml = YAML()  # round-trip: keeps comments
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long token onto a second line
    with cpath.open(encoding="utf-8") as f:
        doc = yaml.load(f)
    asv = doc["appservice"]
    changed = False
    for key in ("as_token", "hs_token", "provisioning_secret"):
        if key == "provisioning_secret" and asv.get(key) != GENERATE:
            continue  # optional: only generated when asked for
        if asv.get(key) in (None, "", GENERATE):
            asv[key] = new_token()
            changed = True
    if changed:
        try:
            _atomic_write(cpath, lambda f: yaml.dump(doc, f))
        except OSError as e:
            raise ConfigError(f"cannot write tokens: {e.strerror}", path=str(cpath)) from None
    cfg = load_config(cpath)
    rpath = Path(registration_path).resolve()
    out = YAML()
    out.default_flow_style = False
    try:
        _atomic_write(rpath, lambda f: out.dump(registration_for(cfg), f), mode=0o600)
    except OSError as e:
        raise ConfigError(f"cannot write registration: {e.strerror}", path=str(rpath)) from None
    return cfg
