"""Configuration of the SIP side: what the pool is given, and what each worker receives.

The main config loader (``bridge/config.py``) fills a :class:`SipConfig`; the pool derives one
:class:`WorkerConfig` per worker with :meth:`SipConfig.for_worker` and sends it over IPC in
the ``Configure`` message. Everything is a frozen dataclass of plain values so that it goes
through JSON unchanged. Passwords are left out of every ``repr``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Literal

Transport = Literal["udp", "tcp", "tls"]
LinkMode = Literal["register", "trunk"]
TimerMode = Literal["inactive", "optional", "required", "always"]
#: event package watched for the extensions' states (``off``: none), see :mod:`.presence`
PresenceMode = Literal["off", "dialog", "presence"]

#: the pjsua2 wheel is built with PJSUA_MAX_CALLS=4; maxCalls above it is silently lowered.
PJSUA_MAX_CALLS = 4
SUPPORTED_CODECS = ("PCMU", "PCMA", "G722")
SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class ListenAddress:
    """One SIP transport to listen on. ``port`` 0 lets the system choose (tests)."""

    transport: Transport
    host: str = "0.0.0.0"
    port: int = 5060


@dataclass(frozen=True)
class SessionTimers:
    """RFC 4028 session timers (pjsua's timerUse, timerSessExpiresSec, timerMinSESec)."""

    mode: TimerMode = "optional"
    expires_s: int = 1800
    min_se_s: int = 90


@dataclass(frozen=True)
class TlsServer:
    """Certificate the TLS listener presents (needed only to accept inbound TLS)."""

    cert_file: str | None = None
    key_file: str | None = None
    key_password: str = field(default="", repr=False)


@dataclass(frozen=True)
class InboundAuth:
    """Digest credentials the PBX must present with its INVITEs and MESSAGEs (we challenge
    with 401). ``realm`` empty: the link's domain."""

    username: str
    password: str = field(repr=False)
    realm: str = ""


@dataclass(frozen=True)
class LinkConfig:
    """One company's line to its PBX.

    ``server_uri`` is the PBX's SIP address (``sip:pbx.acme.example:5060``): the registrar in
    ``register`` mode and the next hop of calls and messages in both modes. When it is missing,
    requests go to ``domain`` as resolved by SIP's rules.
    """

    company: str
    mode: LinkMode
    domain: str
    server_uri: str | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    auth_username: str | None = None
    transport: Transport = "udp"
    #: IPs or CIDRs allowed to send INVITE/MESSAGE/OPTIONS for this company. Required in trunk
    #: mode; optional in register mode (empty: anyone who reaches our registered Contact).
    allowed_sources: tuple[str, ...] = ()
    tls_verify: bool = True
    ca_file: str | None = None
    register_expires_s: int = 300
    #: concurrent calls of this company over all workers (None: no limit but capacity).
    max_calls: int | None = None
    #: when set, INVITE and MESSAGE from an admitted source must carry these credentials.
    inbound_auth: InboundAuth | None = None
    #: the extensions' states come from SUBSCRIBE to this event package (home worker only)
    presence: PresenceMode = "off"
    #: the extensions whose states are watched (empty unless ``presence`` is on)
    extensions: tuple[str, ...] = ()

    @property
    def inbound_realm(self) -> str:
        auth = self.inbound_auth
        return (auth.realm or self.domain) if auth else ""

    def validate(self) -> None:
        if not SLUG_RE.fullmatch(self.company):
            raise ValueError(f"company slug {self.company!r} must match {SLUG_RE.pattern}")
        if self.mode not in ("register", "trunk"):
            raise ValueError(f"{self.company}: mode must be register or trunk, not {self.mode!r}")
        if self.transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"{self.company}: transport must be udp, tcp or tls")
        if not self.domain:
            raise ValueError(f"{self.company}: domain is required")
        if self.mode == "register" and not self.username:
            raise ValueError(f"{self.company}: register mode needs a username")
        if self.mode == "trunk" and not self.allowed_sources:
            raise ValueError(f"{self.company}: trunk mode needs allowed_sources (IPs or CIDRs)")
        for src in self.allowed_sources:
            try:
                ipaddress.ip_network(src, strict=False)
            except ValueError:
                raise ValueError(
                    f"{self.company}: allowed source {src!r} is not an IP or CIDR"
                ) from None
        auth = self.inbound_auth
        if auth is not None and not (auth.username and auth.password):
            raise ValueError(f"{self.company}: inbound_auth needs a username and a password")
        if auth is not None and any(c in self.inbound_realm for c in '"\\\r\n'):
            raise ValueError(f"{self.company}: the inbound_auth realm cannot hold quotes, "
                             "backslashes or line breaks")
        if self.register_expires_s < 10:
            # pjsua refreshes 5 s before expiry
            raise ValueError(f"{self.company}: register_expires_s must be at least 10")
        if self.presence not in ("off", "dialog", "presence"):
            raise ValueError(f"{self.company}: presence must be off, dialog or presence")


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one worker process needs; sent over IPC in ``Configure``."""

    index: int = 0
    listen: tuple[ListenAddress, ...] = (ListenAddress("udp"),)
    #: address written into Contact, Via and SDP (NAT); None: the bound address.
    public_address: str | None = None
    rtp_port_start: int = 20000
    rtp_port_count: int = 1000
    #: media bind address; None: the first listen host.
    rtp_host: str | None = None
    #: ICE host candidate addresses of the WebRTC legs (empty: every non-loopback address).
    media_addresses: tuple[str, ...] = ()
    max_calls: int = PJSUA_MAX_CALLS
    codecs: tuple[str, ...] = SUPPORTED_CODECS
    clock_rate: int = 8000
    session_timers: SessionTimers = SessionTimers()
    tls_server: TlsServer = TlsServer()
    links: tuple[LinkConfig, ...] = ()
    #: companies whose REGISTER this worker sends (each register link has one home worker).
    registers: tuple[str, ...] = ()
    #: companies whose extension states this worker watches (presence on, home worker here)
    watches: tuple[str, ...] = ()
    message_max_bytes: int = 4096
    #: ``libHandleEvents`` timeout of the pjsua2 owner loop, in milliseconds.
    poll_ms: int = 10
    user_agent: str = "matrix-sip-bridge"
    log_level: str = "INFO"
    #: pjsua's own log level (1 errors … 5 every SIP message); shown at DEBUG in Python logging.
    pj_log_level: int = 2
    #: HMAC key of the digest nonces (see :mod:`.digest`); empty: the worker makes its own.
    nonce_secret: str = field(default="", repr=False)
    #: install the pjsip source filter (False only to test the fallback in pjsua2's callbacks)
    source_filter: bool = True

    @property
    def frame_bytes(self) -> int:
        return self.clock_rate // 50 * 2

    def link(self, company: str) -> LinkConfig | None:
        for link in self.links:
            if link.company == company:
                return link
        return None


@dataclass(frozen=True)
class SipConfig:
    """The SIP section of the bridge config, as the pool takes it."""

    listen: tuple[ListenAddress, ...] = (ListenAddress("udp"),)
    public_address: str | None = None
    #: first and last RTP port (inclusive), shared out between the workers.
    rtp_ports: tuple[int, int] = (20000, 20999)
    rtp_host: str | None = None
    media_addresses: tuple[str, ...] = ()
    workers: int | Literal["auto"] = "auto"
    calls_per_worker: int = PJSUA_MAX_CALLS
    #: worker i listens on each listen port + i * port_step (port 0 stays 0).
    port_step: int = 1
    #: or exactly these SIP ports, one per worker (applied to every listen address).
    worker_ports: tuple[int, ...] | None = None
    codecs: tuple[str, ...] = SUPPORTED_CODECS
    clock_rate: int = 8000
    session_timers: SessionTimers = SessionTimers()
    tls_server: TlsServer = TlsServer()
    links: tuple[LinkConfig, ...] = ()
    #: pinned home workers ((company, worker index), ...): links added or kept at run time
    #: keep their worker when others come and go (see :meth:`with_link`).
    homes: tuple[tuple[str, int], ...] = ()
    message_max_bytes: int = 4096
    poll_ms: int = 10
    user_agent: str = "matrix-sip-bridge"
    log_level: str = "INFO"
    pj_log_level: int = 2
    heartbeat_interval_s: float = 1.0
    #: a worker silent (or with a stalled pjsua2 loop) this long is killed and replaced.
    heartbeat_timeout_s: float = 5.0
    start_timeout_s: float = 20.0
    #: refuse new calls while less than this % of the machine's CPU is idle (0: never);
    #: see :mod:`.admission`.
    min_idle_cpu: float = 0.0
    #: HMAC key of the digest nonces, random per pool and shared by its workers: a nonce one
    #: worker gave out stays valid at another (a round-robin dispatcher in front).
    nonce_secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False,
                              compare=False)
    #: install the pjsip source filter (False only to test the fallback in pjsua2's callbacks)
    source_filter: bool = True

    def worker_count(self) -> int:
        if self.workers == "auto":
            return max(1, os.cpu_count() or 1)
        return max(1, int(self.workers))

    def validate(self) -> None:
        count = self.worker_count()
        if not 1 <= self.calls_per_worker <= PJSUA_MAX_CALLS:
            raise ValueError(
                f"calls_per_worker must be 1..{PJSUA_MAX_CALLS} (the pjsua2 wheel's limit), "
                f"got {self.calls_per_worker}"
            )
        if not self.listen:
            raise ValueError("sip.listen needs at least one transport")
        if not 0 <= self.min_idle_cpu < 100:
            raise ValueError(f"min_idle_cpu must be 0-99 %, got {self.min_idle_cpu}")
        for codec in self.codecs:
            if codec not in SUPPORTED_CODECS:
                raise ValueError(f"codec {codec!r} is not one of {', '.join(SUPPORTED_CODECS)}")
        if self.clock_rate not in (8000, 16000, 32000, 48000):
            raise ValueError(
                f"clock_rate must be 8000, 16000, 32000 or 48000, not {self.clock_rate}"
            )
        first, last = self.rtp_ports
        per_worker = (last - first + 1) // count
        if per_worker < 4 * self.calls_per_worker:
            raise ValueError(
                f"rtp_ports {first}-{last} is too small for {count} worker(s): each needs "
                f"{4 * self.calls_per_worker} ports"
            )
        if self.worker_ports is not None and len(self.worker_ports) < count:
            raise ValueError(
                f"worker_ports lists {len(self.worker_ports)} ports for {count} workers"
            )
        seen: set[str] = set()
        for link in self.links:
            link.validate()
            if link.company in seen:
                raise ValueError(f"company {link.company!r} has two links")
            seen.add(link.company)
        self._check_port_collisions(count)

    def _listen_for(self, index: int) -> tuple[ListenAddress, ...]:
        out = []
        for la in self.listen:
            if self.worker_ports is not None:
                port = self.worker_ports[index]
            elif la.port == 0:
                port = 0
            else:
                port = la.port + index * self.port_step
            out.append(replace(la, port=port))
        return tuple(out)

    def _check_port_collisions(self, count: int) -> None:
        used: dict[tuple[str, int], int] = {}
        for i in range(count):
            for la in self._listen_for(i):
                if la.port == 0:
                    continue
                proto = "udp" if la.transport == "udp" else "tcp"
                key = (proto, la.port)
                if key in used and not (self.worker_ports is not None and used[key] == i):
                    raise ValueError(
                        f"worker {i} would listen on {proto} port {la.port}, already used by "
                        f"worker {used[key]}: raise sip.port_step or list worker_ports"
                    )
                used[key] = i

    def home_worker(self, company: str) -> int:
        """The worker that registers ``company`` (register mode) and receives its calls."""
        pinned = dict(self.homes)
        if company in pinned:
            return pinned[company] % self.worker_count()
        register = [link.company for link in self.links if link.mode == "register"]
        if company in register:
            return register.index(company) % self.worker_count()
        return 0

    def _pinned(self) -> dict[str, int]:
        return {link.company: self.home_worker(link.company) for link in self.links}

    def with_link(self, link: LinkConfig) -> SipConfig:
        """This config with ``link`` added or replaced (run time); every other link keeps its
        home worker, a new register link goes to the worker with the fewest."""
        link.validate()
        homes = self._pinned()
        if link.company not in homes:
            load = [0] * self.worker_count()
            for company, worker in homes.items():
                if self.link(company).mode == "register":
                    load[worker] += 1
            homes[link.company] = load.index(min(load)) if link.mode == "register" else 0
        links = (*(x for x in self.links if x.company != link.company), link)
        return replace(self, links=links, homes=tuple(sorted(homes.items())))

    def without_link(self, company: str) -> SipConfig:
        homes = self._pinned()
        homes.pop(company, None)
        return replace(self, links=tuple(x for x in self.links if x.company != company),
                       homes=tuple(sorted(homes.items())))

    def link(self, company: str) -> LinkConfig:
        for link in self.links:
            if link.company == company:
                return link
        raise KeyError(company)

    def for_worker(self, index: int) -> WorkerConfig:
        count = self.worker_count()
        first, last = self.rtp_ports
        per_worker = (last - first + 1) // count
        return WorkerConfig(
            index=index,
            listen=self._listen_for(index),
            public_address=self.public_address,
            rtp_port_start=first + index * per_worker,
            rtp_port_count=per_worker,
            rtp_host=self.rtp_host,
            media_addresses=self.media_addresses,
            max_calls=self.calls_per_worker,
            codecs=self.codecs,
            clock_rate=self.clock_rate,
            session_timers=self.session_timers,
            tls_server=self.tls_server,
            links=self.links,
            registers=tuple(
                link.company
                for link in self.links
                if link.mode == "register" and self.home_worker(link.company) == index
            ),
            watches=tuple(
                link.company
                for link in self.links
                if link.presence != "off" and self.home_worker(link.company) == index
            ),
            message_max_bytes=self.message_max_bytes,
            poll_ms=self.poll_ms,
            user_agent=self.user_agent,
            log_level=self.log_level,
            pj_log_level=self.pj_log_level,
            nonce_secret=self.nonce_secret,
            source_filter=self.source_filter,
        )
