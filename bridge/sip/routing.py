"""Which company's link a received request belongs to, and whether its source may send it.

One pure function used twice: by the :mod:`.sourcefilter` (a pjsip module that answers 403
before pjsua2 sees the request) and again in pjsua2's callbacks (which also cover the case
where the filter could not be installed). Rules, first match wins:

1. The Request-URI carries our Contact parameter ``bridge-link=<company>`` (register mode:
   the PBX calls the Contact we registered) → that company, if the source is allowed.
2. The source IP is in a trunk link's ``allowed_sources`` → that company.
3. The Request-URI user, or the To user and host, is a register link's account
   (``username@domain``) → that company, if the source is allowed.

Who is allowed: the link's ``allowed_sources`` when it has them. A register link without
them admits only the addresses its registrar (the ``server_uri`` host, else the domain)
resolves to, looked up once when the routes are built (:func:`routes_of`): requests reach us
through the registrar, never straight from a stranger who names the account or the Contact
parameter. A registrar that does not resolve admits nobody (logged once). When the registrar
is found through DNS SRV records, or calls come from other hosts than the one we register
at, list them in ``allowed_sources``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .config import LinkConfig
from .sipmsg import Request, parse_name_addr, parse_uri

log = logging.getLogger(__name__)

LINK_PARAM = "bridge-link"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: host name → its addresses (raises OSError when it does not resolve)
Resolver = Callable[[str], Sequence[str]]


def resolve_host(host: str) -> tuple[str, ...]:
    """Every address ``host`` resolves to (A and AAAA), sorted; OSError if none."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    return tuple(sorted({str(info[4][0]).split("%", 1)[0] for info in infos}))


def registrar_host(link: LinkConfig) -> str:
    """The host of ``server_uri`` (else of the domain), without port or IPv6 brackets."""
    uri = link.server_uri or f"sip:{link.domain}"
    if not uri.lower().startswith(("sip:", "sips:")):
        uri = f"sip:{uri}"
    return parse_uri(uri).host.strip("[]")


def registrar_networks(link: LinkConfig, resolver: Resolver = resolve_host
                       ) -> tuple[IpNetwork, ...]:
    """The registrar's addresses as /32 (/128) networks; () when it does not resolve."""
    host = registrar_host(link)
    try:
        return (ipaddress.ip_network(host),)
    except ValueError:
        pass
    try:
        found = resolver(host)
        nets = tuple(ipaddress.ip_network(a) for a in found)
        if not nets:
            raise OSError("no address")
    except (OSError, ValueError) as e:
        log.error("%s: cannot resolve the registrar %s (%s): its link admits no requests until "
                  "the worker restarts with it resolvable; or set allowed_sources",
                  link.company, host, e)
        return ()
    return nets


@dataclass(frozen=True)
class LinkRoute:
    company: str
    mode: str
    username: str
    domain: str
    networks: tuple[IpNetwork, ...]

    @classmethod
    def of(cls, link: LinkConfig, resolver: Resolver = resolve_host) -> LinkRoute:
        nets = tuple(ipaddress.ip_network(s, strict=False) for s in link.allowed_sources)
        if not nets and link.mode == "register":
            nets = registrar_networks(link, resolver)
        return cls(link.company, link.mode, link.username.lower(), link.domain.lower(), nets)

    def admits(self, source_ip: str) -> bool:
        """Whether ``source_ip`` is in the link's networks (none: nobody is admitted)."""
        try:
            ip = ipaddress.ip_address(source_ip)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)


def routes_of(links: Iterable[LinkConfig], resolver: Resolver = resolve_host
              ) -> tuple[LinkRoute, ...]:
    """The routes of ``links``; register links without ``allowed_sources`` resolve their
    registrar here (blocking, once)."""
    return tuple(LinkRoute.of(link, resolver) for link in links)


def resolve(routes: Sequence[LinkRoute], request: Request, source_ip: str) -> str | None:
    """The company the request is for, or None (→ 403 Forbidden)."""
    named = request.uri.params.get(LINK_PARAM)
    if named:
        for r in routes:
            if r.company == named and r.mode == "register":
                return r.company if r.admits(source_ip) else None
    for r in routes:
        if r.mode == "trunk" and r.admits(source_ip):
            return r.company
    to_value = request.header("to")
    to_uri = parse_name_addr(to_value).uri if to_value else None
    for r in routes:
        if r.mode != "register" or not r.admits(source_ip):
            continue
        if to_uri is not None and to_uri.user.lower() == r.username and to_uri.host == r.domain:
            return r.company
    matches = [
        r for r in routes
        if r.mode == "register" and r.admits(source_ip) and request.uri.user.lower() == r.username
    ]
    if len(matches) == 1:
        return matches[0].company
    return None
