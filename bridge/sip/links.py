"""PBX links: one pjsua2 Account per company, registration and its retries (owner thread).

Every worker has an Account for every company (calls and messages may leave from any worker
with the same credentials), but only a link's *home* worker sends REGISTER for it
(``WorkerConfig.registers``). pjsua refreshes a registration before it expires on its own;
its own retry is switched off, and a failed registration is retried here with a back-off of
1 s doubling up to 5 min. Each change is reported as an ``ipc.LinkState``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import pjsua2 as pj

from . import ipc
from .config import LinkConfig, WorkerConfig
from .pjlib import pj_reason
from .routing import LINK_PARAM
from .sipmsg import parse_uri
from .transports import TransportSet

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 300.0
#: a removed link's account is deleted this long after its unregistration was sent.
RETIRE_AFTER_S = 3.0

_TIMER_MODES = {
    "inactive": pj.PJSUA_SIP_TIMER_INACTIVE,
    "optional": pj.PJSUA_SIP_TIMER_OPTIONAL,
    "required": pj.PJSUA_SIP_TIMER_REQUIRED,
    "always": pj.PJSUA_SIP_TIMER_ALWAYS,
}


class AccountSink(Protocol):
    """Where a LinkAccount's callbacks go (held weakly: no reference cycle through pjsua2)."""

    def incoming_call(self, acc: LinkAccount, prm: pj.OnIncomingCallParam) -> None: ...

    def incoming_message(self, acc: LinkAccount, prm: pj.OnInstantMessageParam) -> None: ...

    def message_status(self, acc: LinkAccount, prm: pj.OnInstantMessageStatusParam) -> None: ...

    def reg_started(self, acc: LinkAccount, renew: bool) -> None: ...

    def reg_state(self, acc: LinkAccount, code: int, reason: str, expires: int) -> None: ...


class LinkAccount(pj.Account):
    """The pjsua2 Account of one company's link; callbacks are O(1) and never raise."""

    def __init__(self, link: LinkConfig, registers: bool, sink: AccountSink) -> None:
        super().__init__()
        self.link = link
        self.registers = registers
        self._sink = weakref.ref(sink)

    def _call(self, name: str, *args: Any) -> None:
        sink = self._sink()
        if sink is None:
            return
        try:
            getattr(sink, name)(self, *args)
        except Exception:
            log.exception("%s callback failed for %s", name, self.link.company)

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        self._call("incoming_call", prm)

    def onInstantMessage(self, prm: pj.OnInstantMessageParam) -> None:
        self._call("incoming_message", prm)

    def onInstantMessageStatus(self, prm: pj.OnInstantMessageStatusParam) -> None:
        self._call("message_status", prm)

    def onRegStarted(self, prm: pj.OnRegStartedParam) -> None:
        self._call("reg_started", bool(prm.renew))

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        try:
            code, reason, expires = int(prm.code), str(prm.reason), int(prm.expiration)
        except Exception:
            log.exception("bad OnRegStateParam")
            return
        self._call("reg_state", code, reason, expires)


def with_transport(uri: str, transport: str) -> str:
    """Add ``;transport=tcp|tls`` to a SIP URI that does not name one (UDP is the default)."""
    if transport == "udp" or ";transport=" in uri.lower():
        return uri
    return f"{uri};transport={transport}"


def next_hop(link: LinkConfig) -> tuple[str, list[str]]:
    """(host part for request URIs, outbound proxies) of a link."""
    if not link.server_uri:
        return link.domain, []
    server = parse_uri(link.server_uri)
    if server.host == link.domain.lower():
        hostport = f"{server.host}:{server.port}" if server.port else server.host
        return hostport, []
    return link.domain, [with_transport(link.server_uri, link.transport) + ";lr"]


def account_config(
    link: LinkConfig, cfg: WorkerConfig, transports: TransportSet, registers: bool
) -> pj.AccountConfig:
    ac = pj.AccountConfig()
    user = link.username or "bridge"
    ac.idUri = f"sip:{user}@{link.domain}"
    ac.sipConfig.transportId = transports.for_link(link)
    ac.sipConfig.contactUriParams = f";{LINK_PARAM}={link.company}"
    if link.password:
        cred = pj.AuthCredInfo("digest", "*", link.auth_username or user, 0, link.password)
        ac.sipConfig.authCreds.append(cred)
    _host, proxies = next_hop(link)
    for proxy in proxies:
        ac.sipConfig.proxies.append(proxy)
    reg = ac.regConfig
    if registers or link.presence != "off":
        # presence: pjsua picks a subscription's account by the URI's host and port, the port
        # being the registrar URI's, so links on one PBX host with other ports stay apart
        # (see .presence); such an account still never REGISTERs (registerOnAdd off)
        reg.registrarUri = with_transport(link.server_uri or f"sip:{link.domain}", link.transport)
    reg.registerOnAdd = registers
    reg.timeoutSec = link.register_expires_s
    reg.retryIntervalSec = 0
    reg.firstRetryIntervalSec = 0
    reg.dropCallsOnFail = False
    reg.unregWaitMsec = 2000
    timers = ac.callConfig
    timers.timerUse = _TIMER_MODES[cfg.session_timers.mode]
    timers.timerSessExpiresSec = cfg.session_timers.expires_s
    timers.timerMinSESec = cfg.session_timers.min_se_s
    media = ac.mediaConfig.transportConfig
    media.port = cfg.rtp_port_start
    media.portRange = cfg.rtp_port_count
    rtp_host = cfg.rtp_host or (cfg.listen[0].host if cfg.listen else "")
    if rtp_host and rtp_host not in ("0.0.0.0", "::"):
        media.boundAddress = rtp_host
    if cfg.public_address:
        media.publicAddress = cfg.public_address
    elif media.boundAddress:
        media.publicAddress = media.boundAddress
    if cfg.public_address:
        # our configured address is the truth: do not let responses' received/rport rewrite it
        ac.natConfig.contactRewriteUse = 0
        ac.natConfig.viaRewriteUse = 0
        ac.natConfig.sdpNatRewriteUse = 0
    return ac


@dataclass
class _RegTrack:
    state: str = "unregistered"
    failures: int = 0
    timer: int = 0


class Links:
    """All Accounts of this worker, and the registration state machine of its home links."""

    def __init__(
        self,
        cfg: WorkerConfig,
        emit: Callable[[Any], None],
        schedule: Callable[[float, Callable[[], None]], int],
        cancel: Callable[[int], None],
    ) -> None:
        self._cfg = cfg
        self._emit = emit
        self._schedule = schedule
        self._cancel = cancel
        self.accounts: dict[str, LinkAccount] = {}
        self._reg: dict[str, _RegTrack] = {}
        #: accounts of removed links, deleted a little later (after their unregistration).
        self._retired: list[LinkAccount] = []
        self.stopping = False

    def create(self, transports: TransportSet, sink: AccountSink) -> None:
        for link in self._cfg.links:
            registers = link.mode == "register" and link.company in self._cfg.registers
            self.add(link, registers, transports, sink)

    def add(self, link: LinkConfig, registers: bool, transports: TransportSet,
            sink: AccountSink) -> None:
        acc = LinkAccount(link, registers, sink)
        acc.create(account_config(link, self._cfg, transports, registers), True)
        self.accounts[link.company] = acc
        if registers:
            self._reg[link.company] = _RegTrack(state="registering")
            self._emit(ipc.LinkState(company=link.company, state="registering"))
            log.info("link %s: registering to %s as %s", link.company,
                     link.server_uri or link.domain, link.auth_username or link.username)

    def remove(self, company: str) -> None:
        """Drop a link at run time: unregister (when registered), then delete its account
        once the unregistration had its chance (pjsua needs the account until then)."""
        acc = self.accounts.pop(company, None)
        track = self._reg.pop(company, None)
        if acc is None:
            return
        if track is not None:
            if track.timer:
                self._cancel(track.timer)
            if track.state == "registered":
                try:
                    acc.setRegistration(False)
                except Exception as e:
                    log.warning("link %s: could not unregister: %s", company, pj_reason(e))
            self._emit(ipc.LinkState(company=company, state="unregistered"))
        log.info("link %s: removed", company)
        self._retired.append(acc)
        self._schedule(RETIRE_AFTER_S, partial(self._shutdown_retired, acc))

    def _shutdown_retired(self, acc: LinkAccount) -> None:
        if acc in self._retired:
            self._retired.remove(acc)
            try:
                acc.shutdown()
            except Exception:
                log.exception("account shutdown failed")

    def get(self, company: str) -> LinkAccount | None:
        return self.accounts.get(company)

    def pending_unregistration(self) -> int:
        return sum(1 for t in self._reg.values() if t.state in ("registered", "unregistering"))

    # -- callbacks (owner thread)
    def reg_started(self, acc: LinkAccount, renew: bool) -> None:
        if self.accounts.get(acc.link.company) is not acc:
            return  # a removed link's account
        track = self._reg.get(acc.link.company)
        if track is None or not renew or self.stopping:
            return
        if track.state not in ("registered", "registering"):
            track.state = "registering"
            self._emit(ipc.LinkState(company=acc.link.company, state="registering"))

    def reg_state(self, acc: LinkAccount, code: int, reason: str, expires: int) -> None:
        company = acc.link.company
        track = self._reg.get(company)
        if track is None or self.accounts.get(company) is not acc:
            return
        if 200 <= code < 300 and expires > 0 and not self.stopping:
            first = track.state != "registered"
            track.state = "registered"
            track.failures = 0
            if first:
                log.info("link %s: registered (expires %d s)", company, expires)
                self._emit(ipc.LinkState(company=company, state="registered", status=code,
                                         reason=reason, expires_s=expires))
            return
        if (200 <= code < 300 and expires <= 0) or self.stopping:
            track.state = "unregistered"
            log.info("link %s: unregistered (%d %s)", company, code, reason)
            self._emit(ipc.LinkState(company=company, state="unregistered", status=code,
                                     reason=reason))
            return
        track.failures += 1
        delay = min(BACKOFF_FIRST_S * 2 ** (track.failures - 1), BACKOFF_MAX_S)
        track.state = "failed"
        if track.timer:
            self._cancel(track.timer)
        track.timer = self._schedule(delay, partial(self._retry, company))
        log.warning("link %s: registration failed: %d %s; retry in %.0f s",
                    company, code, reason, delay)
        self._emit(ipc.LinkState(company=company, state="failed", status=code, reason=reason,
                                 retry_in_s=delay))

    def _retry(self, company: str) -> None:
        track = self._reg.get(company)
        acc = self.accounts.get(company)
        if track is None or acc is None or self.stopping:
            return
        track.timer = 0
        track.state = "registering"
        self._emit(ipc.LinkState(company=company, state="registering"))
        try:
            acc.setRegistration(True)
        except Exception as e:
            log.warning("link %s: could not send REGISTER: %s", company, pj_reason(e))
            self.reg_state(acc, 503, pj_reason(e), 0)

    def transport_lost(self, kind: str) -> None:
        """A TCP/TLS connection closed: registrations over that transport may be gone with it
        (pjsua itself only re-registers when its own retry is on). Re-register those links
        in a second; for a link whose connection was not the one lost, that is one early
        refresh."""
        if self.stopping:
            return
        for company, track in self._reg.items():
            acc = self.accounts.get(company)
            if acc is None or acc.link.transport != kind or track.state != "registered":
                continue
            if track.timer:
                continue
            log.info("link %s: %s connection closed; registering again", company, kind)
            track.timer = self._schedule(BACKOFF_FIRST_S, partial(self._retry, company))

    # -- shutdown (owner thread)
    def unregister_all(self) -> None:
        """Send REGISTER with expires 0 for every registered home link."""
        self.stopping = True
        for company, track in self._reg.items():
            if track.timer:
                self._cancel(track.timer)
                track.timer = 0
            if track.state != "registered":
                if track.state != "unregistered":
                    track.state = "unregistered"
                    self._emit(ipc.LinkState(company=company, state="unregistered"))
                continue
            track.state = "unregistering"
            try:
                self.accounts[company].setRegistration(False)
            except Exception as e:
                log.warning("link %s: could not unregister: %s", company, pj_reason(e))
                track.state = "unregistered"

    def shutdown(self) -> None:
        """``acc.shutdown()`` for every account, then drop them (before ``libDestroy``)."""
        self.accounts.update({f"retired-{i}": a for i, a in enumerate(self._retired)})
        self._retired.clear()
        while self.accounts:
            _company, acc = self.accounts.popitem()
            try:
                acc.shutdown()
            except Exception:
                log.exception("account shutdown failed")
            del acc

