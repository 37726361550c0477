"""Maps the bridge's validated config (bridge.config.Config) onto the pool's SipConfig."""

from __future__ import annotations

import ipaddress
import logging

from ..config import CompanyConfig, Config, registrar_host
from .config import InboundAuth, LinkConfig, ListenAddress, SipConfig, TlsServer
from .routing import resolve_host

log = logging.getLogger(__name__)

# Matches no real source: a register link whose registrar cannot be resolved admits nothing.
NOBODY = "255.255.255.255/32"


def allowed_sources(c: CompanyConfig) -> tuple[str, ...]:
    """Trunk: as configured. Register mode without a list: the registrar's addresses only,
    so that requests reach us only through the registrar (never from strangers)."""
    if c.pbx.allowed_sources or c.pbx.mode == "trunk":
        return tuple(c.pbx.allowed_sources)
    host = registrar_host(c.pbx.registrar)
    try:
        ipaddress.ip_address(host)
        return (host,)
    except ValueError:
        pass
    try:
        return resolve_host(host)
    except OSError as e:
        log.error("%s: cannot resolve the registrar %s (%s); its link admits no requests "
                  "until the bridge restarts with it resolvable, or set pbx.allowed_sources",
                  c.slug, host, e)
        return (NOBODY,)


def inbound_auth(c: CompanyConfig) -> InboundAuth | None:
    """The digest credentials the PBX must send us (realm already defaulted to the domain)."""
    a = c.pbx.inbound_auth
    return InboundAuth(a.username, a.password, a.realm) if a else None


def link_config(c: CompanyConfig, cfg: Config) -> LinkConfig:
    """A company's PBX link (also for companies linked at run time)."""
    return LinkConfig(
        company=c.slug,
        mode=c.pbx.mode,  # type: ignore[arg-type]
        domain=c.pbx.domain,
        server_uri=c.pbx.registrar,
        username=c.pbx.username or "",
        password=c.pbx.password or "",
        transport=c.pbx.transport,  # type: ignore[arg-type]
        allowed_sources=allowed_sources(c),
        tls_verify=c.pbx.tls_verify,
        ca_file=cfg.sip.tls_ca_file,
        register_expires_s=c.pbx.register_expires,
        max_calls=c.pbx.max_calls,
        presence=c.pbx.presence,  # type: ignore[arg-type]
        extensions=tuple(sorted(c.extensions)) if c.pbx.presence != "off" else (),
        inbound_auth=inbound_auth(c),
    )


def sip_config(cfg: Config) -> SipConfig:
    s = cfg.sip
    listen: list[ListenAddress] = []
    if s.listen_udp is not None:
        listen.append(ListenAddress("udp", s.listen_udp[0], s.listen_udp[1]))
    if s.listen_tcp is not None:
        listen.append(ListenAddress("tcp", s.listen_tcp[0], s.listen_tcp[1]))
    if s.listen_tls is not None:
        listen.append(ListenAddress("tls", s.listen_tls[0], s.listen_tls[1]))
    links = tuple(link_config(c, cfg) for c in cfg.companies.values())
    return SipConfig(
        listen=tuple(listen),
        public_address=s.public_address,
        rtp_ports=s.rtp_ports,
        media_addresses=tuple(s.media_addresses),
        workers=s.workers,
        calls_per_worker=s.calls_per_worker,
        min_idle_cpu=float(s.min_idle_cpu),
        codecs=tuple(s.codecs),
        clock_rate=s.clock_rate,
        tls_server=TlsServer(cert_file=s.tls_cert_file, key_file=s.tls_key_file),
        links=links,
        log_level=cfg.logging.levels.get("bridge.sip", cfg.logging.level),
    )
