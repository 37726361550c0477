"""Loading and validating the bridge's YAML config into typed, frozen dataclasses.

The schema below is the single source of truth for which keys exist; `config.example.yaml`
documents each of them. Relative file paths (the SQLite database, avatars) are resolved
against the folder that holds the config file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .config_schema import (
    Bool,
    Custom,
    Enum,
    Int,
    List,
    Map,
    OneOf,
    Str,
    Struct,
    optional,
    required,
)
from .dialplan import check_pattern
from .errors import ConfigError

GENERATE = "generate"
PERMISSION_LEVELS = ("none", "call", "user", "admin")
# The pjsua2 wheel on PyPI is built with PJSUA_MAX_CALLS=4.
MAX_CALLS_PER_WORKER = 4

_SLUG = r"[a-z0-9][a-z0-9-]{0,62}"
_LOCALPART = r"[a-z0-9._=/+-]+"


def _host_port(value: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", value)
    if not m:
        raise ValueError(f"{value!r} is not HOST:PORT")
    host, port = m.group(1), int(m.group(2))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


def _port_range(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,5})\s*-\s*(\d{1,5})", value)
    if not m:
        raise ValueError(f"{value!r} is not a range like 20000-20999")
    lo, hi = int(m.group(1)), int(m.group(2))
    if not (1024 <= lo <= hi <= 65535):
        raise ValueError(f"{value!r} must lie within 1024-65535 with low <= high")
    return lo, hi


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None
    return value


def _template(placeholder: str) -> Any:
    def check(value: str) -> str:
        if "{" + placeholder + "}" not in value:
            raise ValueError(f"must contain {{{placeholder}}}")
        return value

    return check


def _url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


def _database(value: str) -> str:
    if value.startswith(("sqlite:", "postgres://", "postgresql://")):
        return value
    raise ValueError("must start with sqlite: or postgres://")


def _sip_uri(value: str) -> str:
    if not re.fullmatch(r"sips?:[^\s]+", value):
        raise ValueError(f"{value!r} is not a SIP URI like sip:pbx.example.com:5060")
    return value


_EXTENSION = Struct(
    {
        "name": required(Str()),
        "public": optional(Bool(), False),
    }
)

_INBOUND_AUTH = Struct(
    {
        "username": required(Str()),
        "password": required(Str(secret=True)),
        "realm": optional(Str(pattern=r'[^"\\\r\n]+', hint="no quotes or backslashes")),
    },
    default_empty=False,
)

_PBX = Struct(
    {
        "mode": optional(Enum("register", "trunk"), "register"),
        "registrar": required(Custom(Str(), _sip_uri)),
        "domain": optional(Str()),
        "username": optional(Str()),
        "password": optional(Str(secret=True)),
        "transport": optional(Enum("udp", "tcp", "tls"), "udp"),
        "tls_verify": optional(Bool(), True),
        "register_expires": optional(Int(minimum=60, maximum=86400), 300),
        "allowed_sources": optional(List(Custom(Str(), _network)), []),
        "max_calls": optional(Int(minimum=1), 50),
        "inbound_auth": optional(_INBOUND_AUTH),
        "presence": optional(Enum("off", "dialog", "presence"), "off"),
    },
    default_empty=False,
)

_COMPANY = Struct(
    {
        "name": required(Str()),
        "description": optional(Str(nonempty=False), ""),
        "avatar": optional(Str()),
        "pbx": required(_PBX),
        "main_line": required(Str()),
        "extensions": optional(Map(_EXTENSION, key_node=Str(pattern=r"[0-9A-Za-z*#+._-]+")), {}),
        "dial_out": optional(List(Custom(Str(), check_pattern)), []),
        "claimable_numbers": optional(List(Custom(Str(), check_pattern)), []),
        "numbers": optional(
            Map(Str(pattern=r"@[^:\s]+:\S+", hint="a Matrix user ID"),
                key_node=Str(pattern=r"[0-9A-Za-z*#+._-]+")),
            {},
        ),
    },
    default_empty=False,
)

SCHEMA = Struct(
    {
        "homeserver": required(
            Struct(
                {
                    "address": required(Custom(Str(), _url)),
                    "domain": required(Str(pattern=r"[A-Za-z0-9.-]+(:\d+)?", hint="a server name")),
                    "verify_ssl": optional(Bool(), True),
                },
                default_empty=False,
            )
        ),
        "appservice": required(
            Struct(
                {
                    "address": required(Custom(Str(), _url)),
                    "hostname": optional(Str(), "127.0.0.1"),
                    "port": optional(Int(minimum=1, maximum=65535), 29360),
                    "database": optional(Custom(Str(), _database), "sqlite:bridge.db"),
                    "id": optional(Str(pattern=r"[A-Za-z0-9._-]+"), "sip"),
                    "bot": optional(
                        Struct(
                            {
                                "username": optional(Str(pattern=_LOCALPART), "sipbot"),
                                "displayname": optional(Str(), "SIP bridge"),
                            }
                        )
                    ),
                    "as_token": required(Str(secret=True)),
                    "hs_token": required(Str(secret=True)),
                    "provisioning_secret": optional(Str(secret=True)),
                },
                default_empty=False,
            )
        ),
        "bridge": optional(
            Struct(
                {
                    "username_template": optional(
                        Custom(Str(pattern=r"[a-z0-9._=/{}-]+"), _template("name")), "sip_{name}"
                    ),
                    "alias_template": optional(
                        Custom(Str(pattern=r"[a-z0-9._=/{}-]+"), _template("name")), "sip_{name}"
                    ),
                    "extension_displayname_template": optional(
                        Str(), "{name} ({company} {extension})"
                    ),
                    "command_prefix": optional(Str(), "!sip"),
                    "default_company": optional(Str(pattern=_SLUG, hint="a company slug")),
                    "early_media_answer": optional(Bool(), True),
                    "inbound_ring_seconds": optional(Int(minimum=5, maximum=600), 60),
                    "limits": optional(
                        Struct(
                            {
                                "calls_per_user": optional(Int(minimum=1), 2),
                                "calls_per_server": optional(Int(minimum=1), 20),
                                "call_attempts_per_minute": optional(Int(minimum=1), 10),
                                "messages_per_minute": optional(Int(minimum=1), 30),
                            }
                        )
                    ),
                    "permissions": optional(Map(Enum(*PERMISSION_LEVELS)), {"*": "call"}),
                }
            )
        ),
        "sip": optional(
            Struct(
                {
                    "listen": optional(
                        Struct(
                            {
                                "udp": optional(Custom(Str(), _host_port), ("0.0.0.0", 5060)),
                                "tcp": optional(Custom(Str(), _host_port), ("0.0.0.0", 5060)),
                                "tls": optional(Custom(Str(), _host_port)),
                            }
                        )
                    ),
                    "public_address": optional(Str()),
                    "media_addresses": optional(List(Str()), []),
                    "rtp_ports": optional(Custom(Str(), _port_range), (20000, 20999)),
                    "workers": optional(
                        OneOf(Enum("auto"), Int(minimum=1, maximum=64), describe="auto or 1-64"),
                        "auto",
                    ),
                    "calls_per_worker": optional(
                        Int(minimum=1, maximum=MAX_CALLS_PER_WORKER), MAX_CALLS_PER_WORKER
                    ),
                    "min_idle_cpu": optional(Int(minimum=0, maximum=90), 5),
                    "codecs": optional(
                        List(Enum("PCMU", "PCMA", "G722"), min_items=1), ["G722", "PCMU", "PCMA"]
                    ),
                    "clock_rate": optional(
                        OneOf(Enum("auto"), Int(), describe="8000 or 16000"), 8000
                    ),
                    "tls": optional(
                        Struct(
                            {
                                "ca_file": optional(Str()),
                                "cert_file": optional(Str()),
                                "key_file": optional(Str()),
                            }
                        )
                    ),
                }
            )
        ),
        "companies": optional(
            Map(_COMPANY, key_node=Str(pattern=_SLUG, hint="a lower-case slug")), {}
        ),
        "metrics": optional(
            Struct(
                {
                    "enabled": optional(Bool(), False),
                    "listen": optional(Custom(Str(), _host_port), ("127.0.0.1", 29361)),
                }
            )
        ),
        "logging": optional(
            Struct(
                {
                    "level": optional(Enum("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
                    "levels": optional(Map(Enum("DEBUG", "INFO", "WARNING", "ERROR")), {}),
                    "format": optional(Enum("text", "json"), "text"),
                }
            )
        ),
    },
    default_empty=False,
)


@dataclass(frozen=True)
class HomeserverConfig:
    address: str
    domain: str
    verify_ssl: bool


@dataclass(frozen=True)
class AppserviceConfig:
    address: str
    hostname: str
    port: int
    database: str
    id: str
    bot_username: str
    bot_displayname: str
    as_token: str = field(repr=False)
    hs_token: str = field(repr=False)
    provisioning_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LimitsConfig:
    calls_per_user: int
    calls_per_server: int
    call_attempts_per_minute: int
    messages_per_minute: int


@dataclass(frozen=True)
class BridgeConfig:
    username_template: str
    alias_template: str
    extension_displayname_template: str
    command_prefix: str
    default_company: str | None
    early_media_answer: bool
    inbound_ring_seconds: int
    limits: LimitsConfig
    permissions: dict[str, str]


@dataclass(frozen=True)
class SipConfig:
    listen_udp: tuple[str, int] | None
    listen_tcp: tuple[str, int] | None
    listen_tls: tuple[str, int] | None
    public_address: str | None
    media_addresses: list[str]
    rtp_ports: tuple[int, int]
    workers: int
    calls_per_worker: int
    min_idle_cpu: int
    codecs: list[str]
    clock_rate: int
    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None


@dataclass(frozen=True)
class ExtensionConfig:
    number: str
    name: str
    public: bool


@dataclass(frozen=True)
class InboundAuthConfig:
    """Digest credentials the PBX must send with its INVITEs and MESSAGEs."""

    username: str
    password: str = field(repr=False)
    realm: str  # the company's pbx.domain unless set


@dataclass(frozen=True)
class PbxConfig:
    mode: str
    registrar: str
    domain: str
    username: str | None
    password: str | None = field(repr=False)
    transport: str
    tls_verify: bool
    register_expires: int
    allowed_sources: list[str]
    max_calls: int
    inbound_auth: InboundAuthConfig | None = None
    #: off, or the event package the extensions' states are subscribed to (dialog, presence)
    presence: str = "off"


@dataclass(frozen=True)
class CompanyConfig:
    slug: str
    name: str
    description: str
    avatar: str | None
    pbx: PbxConfig
    main_line: str
    extensions: dict[str, ExtensionConfig]
    numbers: dict[str, str]
    dial_out: list[str]
    claimable_numbers: list[str]


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool
    listen: tuple[str, int]


@dataclass(frozen=True)
class LoggingConfig:
    level: str
    levels: dict[str, str]
    format: str


@dataclass(frozen=True)
class Config:
    path: Path
    homeserver: HomeserverConfig
    appservice: AppserviceConfig
    bridge: BridgeConfig
    sip: SipConfig
    companies: dict[str, CompanyConfig]
    logging: LoggingConfig
    metrics: MetricsConfig

    @property
    def bot_mxid(self) -> str:
        return f"@{self.appservice.bot_username}:{self.homeserver.domain}"

    def secrets(self) -> list[str]:
        """Every secret in the config (for log scrubbing and tests)."""
        out = [self.appservice.as_token, self.appservice.hs_token,
               self.appservice.provisioning_secret or ""]
        out += [c.pbx.password for c in self.companies.values() if c.pbx.password]
        out += [c.pbx.inbound_auth.password for c in self.companies.values()
                if c.pbx.inbound_auth]
        return [s for s in out if s]


def registrar_host(uri: str) -> str:
    """sip:user@pbx.example:5060;transport=tcp → pbx.example ([::1] → ::1)."""
    rest = uri.split(":", 1)[1].split(";", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def _resolve_path(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _resolve_database(base: Path, url: str) -> str:
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:").removeprefix("///")
        if path != ":memory:" and not Path(path).is_absolute():
            path = str(base / path)
        return f"sqlite:{path}"
    return url


def _company(slug: str, c: dict[str, Any], base: Path, path: str | None,
             key: str) -> CompanyConfig:
    p = c["pbx"]
    if p["mode"] == "register" and not (p["username"] and p["password"]):
        raise ConfigError(
            "register mode needs pbx.username and pbx.password",
            path=path,
            key=f"{key}.pbx",
        )
    if p["mode"] == "trunk" and not p["allowed_sources"]:
        raise ConfigError(
            "trunk mode needs pbx.allowed_sources (who may send us INVITEs)",
            path=path,
            key=f"{key}.pbx.allowed_sources",
        )
    domain = p["domain"] or registrar_host(p["registrar"])
    inbound = p["inbound_auth"]
    pbx = PbxConfig(
        mode=p["mode"],
        registrar=p["registrar"],
        domain=domain,
        username=p["username"],
        password=p["password"],
        transport=p["transport"],
        tls_verify=p["tls_verify"],
        register_expires=p["register_expires"],
        allowed_sources=p["allowed_sources"],
        max_calls=p["max_calls"],
        inbound_auth=InboundAuthConfig(
            username=inbound["username"], password=inbound["password"],
            realm=inbound["realm"] or domain,
        ) if inbound else None,
        presence=p["presence"],
    )
    return CompanyConfig(
        slug=slug,
        name=c["name"],
        description=c["description"],
        avatar=_resolve_path(base, c["avatar"]),
        pbx=pbx,
        main_line=c["main_line"],
        extensions={
            num: ExtensionConfig(number=num, name=e["name"], public=e["public"])
            for num, e in c["extensions"].items()
        },
        numbers=c["numbers"],
        dial_out=c["dial_out"],
        claimable_numbers=c["claimable_numbers"],
    )


def company_from_raw(slug: str, raw: Any, base: Path) -> CompanyConfig:
    """A company given at run time (database, command, provisioning API), checked against the
    same schema as the config file's ``companies`` entries; ConfigError names the bad key."""
    key = f"companies.{slug}"
    if not re.fullmatch(_SLUG, slug):
        raise ConfigError("must be a lower-case slug (a-z, 0-9, -)", key=key)
    checked = _COMPANY.check(raw, key)
    return _company(slug, checked, base, None, key)


def _build(raw: dict[str, Any], path: Path) -> Config:
    base = path.parent
    hs, asv, br, sip = raw["homeserver"], raw["appservice"], raw["bridge"], raw["sip"]
    for name in ("as_token", "hs_token", "provisioning_secret"):
        if asv[name] == GENERATE:
            raise ConfigError(
                f"is still '{GENERATE}': run with -g -r registration.yaml first",
                path=str(path),
                key=f"appservice.{name}",
            )
    workers = sip["workers"]
    if workers == "auto":
        workers = max(1, os.cpu_count() or 1)
    clock = sip["clock_rate"]
    if clock == "auto":
        clock = 16000 if sip["codecs"][0] == "G722" else 8000
    if clock not in (8000, 16000):
        raise ConfigError("must be 8000, 16000 or auto", path=str(path), key="sip.clock_rate")
    companies = {slug: _company(slug, c, base, str(path), f"companies.{slug}")
                 for slug, c in raw["companies"].items()}
    if br["default_company"] is not None and br["default_company"] not in companies:
        raise ConfigError(
            f"names no company in companies: {br['default_company']!r}",
            path=str(path),
            key="bridge.default_company",
        )
    return Config(
        path=path,
        homeserver=HomeserverConfig(hs["address"], hs["domain"], hs["verify_ssl"]),
        appservice=AppserviceConfig(
            address=asv["address"],
            hostname=asv["hostname"],
            port=asv["port"],
            database=_resolve_database(base, asv["database"]),
            id=asv["id"],
            bot_username=asv["bot"]["username"],
            bot_displayname=asv["bot"]["displayname"],
            as_token=asv["as_token"],
            hs_token=asv["hs_token"],
            provisioning_secret=asv["provisioning_secret"],
        ),
        bridge=BridgeConfig(
            username_template=br["username_template"],
            alias_template=br["alias_template"],
            extension_displayname_template=br["extension_displayname_template"],
            command_prefix=br["command_prefix"],
            default_company=br["default_company"],
            early_media_answer=br["early_media_answer"],
            inbound_ring_seconds=br["inbound_ring_seconds"],
            limits=LimitsConfig(**br["limits"]),
            permissions=br["permissions"],
        ),
        sip=SipConfig(
            listen_udp=sip["listen"]["udp"],
            listen_tcp=sip["listen"]["tcp"],
            listen_tls=sip["listen"]["tls"],
            public_address=sip["public_address"],
            media_addresses=sip["media_addresses"],
            rtp_ports=sip["rtp_ports"],
            workers=workers,
            calls_per_worker=sip["calls_per_worker"],
            min_idle_cpu=sip["min_idle_cpu"],
            codecs=sip["codecs"],
            clock_rate=clock,
            tls_ca_file=_resolve_path(base, sip["tls"]["ca_file"]),
            tls_cert_file=_resolve_path(base, sip["tls"]["cert_file"]),
            tls_key_file=_resolve_path(base, sip["tls"]["key_file"]),
        ),
        companies=companies,
        logging=LoggingConfig(**raw["logging"]),
        metrics=MetricsConfig(**raw["metrics"]),
    )


def read_yaml(path: Path) -> Any:
    """Read a YAML file; every failure becomes a one-line ConfigError naming the path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", path=str(path)) from None
    except PermissionError:
        raise ConfigError("permission denied (cannot read the file)", path=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", path=str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", path=str(path)) from None
    try:
        return YAML(typ="safe").load(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"invalid YAML{where}: {problem}", path=str(path)) from None


def load_config(path: str | os.PathLike[str], *, allow_generate: bool = False) -> Config:
    """Read, validate and build the config. Raises ConfigError with a one-line message."""
    p = Path(path).resolve()
    raw = read_yaml(p)
    if raw is None:
        raise ConfigError("the file is empty", path=str(p))
    try:
        clean = SCHEMA.check(raw, "")
    except ConfigError as e:
        raise ConfigError(str(e), path=str(p)) from None
    if allow_generate:
        for name in ("as_token", "hs_token", "provisioning_secret"):
            if clean["appservice"][name] == GENERATE:
                clean["appservice"][name] = "not-yet-generated"
    return _build(clean, p)


def group_readable_warning(path: Path) -> str | None:
    """A warning when others than the owner may read the config (it holds secrets)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & 0o044:
        return (
            f"{path} is readable by other users (mode {oct(mode & 0o777)}); it holds secrets: "
            f"chmod 600 {path}"
        )
    return None
