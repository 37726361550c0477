"""SIP transports of one worker (owner thread): UDP, TCP, TLS listeners and TLS client setups.

pjsip's TLS verification settings belong to a TLS transport (listener/factory), not to an
account, so each distinct (verify, CA file) pair among the links gets its own TLS factory;
the first one listens on the configured TLS port, extra ones on an ephemeral port of the same
host. A link is locked to its transport (``AccountSipConfig.transportId``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pjsua2 as pj

from . import ipc
from .config import LinkConfig, ListenAddress, TlsServer, WorkerConfig
from .sipmsg import split_source

log = logging.getLogger(__name__)

_TYPES = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
    "tls": pj.PJSIP_TRANSPORT_TLS,
}
SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


def system_ca_file() -> str:
    for path in SYSTEM_CA_BUNDLES:
        if os.path.exists(path):
            return path
    return ""


@dataclass
class TransportSet:
    ids: dict[str, int] = field(default_factory=dict)
    tls_ids: dict[tuple[bool, str], int] = field(default_factory=dict)
    bound: list[ipc.BoundTransport] = field(default_factory=list)
    _ep: pj.Endpoint | None = None
    _tls_listen: ListenAddress | None = None
    _public: str | None = None
    _server: TlsServer = field(default_factory=TlsServer)

    def for_link(self, link: LinkConfig) -> int:
        if link.transport != "tls":
            if link.transport not in self.ids:
                raise ValueError(
                    f"link {link.company} uses {link.transport}, which is not listened on"
                )
            return self.ids[link.transport]
        key = (link.tls_verify, link.ca_file or "")
        if key not in self.tls_ids:
            if self._ep is None or self._tls_listen is None:
                raise ValueError(f"link {link.company} uses TLS, which is not listened on")
            extra = ListenAddress("tls", self._tls_listen.host, 0)
            tid = _create(self._ep, extra, self._public, self._server, link.tls_verify,
                          link.ca_file)
            self.tls_ids[key] = tid
        return self.tls_ids[key]

    def drop_endpoint(self) -> None:
        self._ep = None


def _create(
    ep: pj.Endpoint,
    la: ListenAddress,
    public: str | None,
    server: TlsServer,
    verify: bool = True,
    ca_file: str | None = None,
) -> int:
    tc = pj.TransportConfig()
    tc.port = la.port
    if la.host not in ("0.0.0.0", "::", ""):
        tc.boundAddress = la.host
    if public:
        tc.publicAddress = public
    elif tc.boundAddress:
        tc.publicAddress = la.host
    if la.transport == "tls":
        tls = tc.tlsConfig
        # The CA list goes in as a buffer, not a file: given a file, pjlib also makes it the
        # listener's client-CA list, and a system bundle's ~140 names in the handshake's
        # CertificateRequest made inbound TLS handshakes stall (measured with this wheel).
        ca_path = ca_file or system_ca_file()
        if ca_path:
            tls.CaBuf = Path(ca_path).read_text()
        tls.verifyServer = verify
        if server.cert_file:
            tls.certFile = server.cert_file
        if server.key_file:
            tls.privKeyFile = server.key_file
        if server.key_password:
            tls.password = server.key_password
    return int(ep.transportCreate(_TYPES[la.transport], tc))


def create_transports(ep: pj.Endpoint, cfg: WorkerConfig) -> TransportSet:
    """Listeners of ``cfg.listen`` (after ``libInit``, before ``libStart``)."""
    ts = TransportSet(_ep=ep, _public=cfg.public_address, _server=cfg.tls_server)
    for la in cfg.listen:
        if la.transport in ts.ids:
            raise ValueError(f"two {la.transport} listen addresses")
        tid = _create(ep, la, cfg.public_address, cfg.tls_server)
        ts.ids[la.transport] = tid
        if la.transport == "tls":
            ts._tls_listen = la
            ts.tls_ids[(True, "")] = tid
        info = ep.transportGetInfo(tid)
        host, port = split_source(str(info.localName))
        ts.bound.append(ipc.BoundTransport(transport=la.transport, host=host, port=port))
        log.info("listening on %s %s:%d", la.transport, host, port)
    return ts
