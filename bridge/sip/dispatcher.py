"""Generate the Kamailio configuration that puts one SIP address in front of all workers.

```
python -m bridge.sip.dispatcher -c config.yaml -o kamailio-dispatcher.cfg --listen 192.0.2.10:5060
kamailio -DD -E -f kamailio-dispatcher.cfg
```

Writes ``kamailio-dispatcher.cfg`` (from the template ``kamailio/dispatcher.cfg.tmpl``) and
its destination list ``kamailio-dispatcher.list`` (one line per worker). Each worker's SIP
address comes from :meth:`.config.SipConfig.for_worker`, the rule the pool itself uses, so
the list matches the ports the workers bind. See docs/dispatcher.md.

Source check (the choice made here): Kamailio checks every new request's source against the
trunk companies' ``allowed_sources`` (first match wins, as in :mod:`.routing`) and forwards it
to a worker from an address reserved for that company. The workers then see that address, so
each trunk company's ``allowed_sources`` must also list its dispatcher address (with one trunk
company: Kamailio's internal address, 127.0.0.1 by default). The generator refuses a config
in which the workers would attribute a company's requests to another company.

Register-mode links are not dispatched: their home worker registers its own Contact, and the
PBX sends their calls there directly.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import SipConfig
from .routing import LinkRoute

TEMPLATE = Path(__file__).resolve().parents[2] / "kamailio" / "dispatcher.cfg.tmpl"
WILDCARDS = ("0.0.0.0", "::", "")
DEFAULT_PING_INTERVAL_S = 5
#: how long a worker may take to answer an INVITE at all (100 Trying) before the next one.
DEFAULT_FR_TIMER_MS = 2000
#: unanswered OPTIONS pings in a row (each given 5 s) before a worker is taken out.
DEFAULT_PING_FAILURES = 3


class DispatcherConfigError(ValueError):
    """The bridge config and the options cannot give a working dispatcher."""


@dataclass(frozen=True)
class Worker:
    index: int
    transport: str  # udp or tcp
    host: str
    port: int

    @property
    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = "" if self.transport == "udp" else f";transport={self.transport}"
        return f"sip:{host}:{self.port}{suffix}"


@dataclass(frozen=True)
class Company:
    slug: str
    #: the PBX's addresses (CIDRs), as in pbx.allowed_sources
    networks: tuple[str, ...]
    #: the address Kamailio sends this company's requests from, towards the workers
    source: str


@dataclass(frozen=True)
class Plan:
    public_host: str
    public_port: int
    internal_port: int
    transport: str
    workers: tuple[Worker, ...]
    companies: tuple[Company, ...]
    warnings: tuple[str, ...] = ()

    def socket(self, host: str) -> str:
        host = f"[{host}]" if ":" in host else host
        return f"{self.transport}:{host}:{self.internal_port}"

    def listen_lines(self) -> list[str]:
        public = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        lines = [f"listen=udp:{public}:{self.public_port}",
                 f"listen=tcp:{public}:{self.public_port}"]
        for company in self.companies:
            line = f"listen={self.socket(company.source)}"
            if line not in lines:
                lines.append(line)
        return lines


def host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or (with a default port) ``HOST``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise DispatcherConfigError(f"{text!r}: give HOST:PORT")
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise DispatcherConfigError(f"{text!r}: the port is not a number") from None
    if not 1 <= port <= 65535:
        raise DispatcherConfigError(f"{text!r}: port out of range")
    return host, port


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise DispatcherConfigError(f"{what} {text!r} is not an IP address") from None


def plan(
    sip: SipConfig,
    listen: str,
    internal: str = "127.0.0.1",
    company_sources: dict[str, str] | None = None,
    workers_host: str | None = None,
) -> Plan:
    """Work out the workers, the companies and the sockets; raise DispatcherConfigError."""
    sip.validate()
    public_host, public_port = host_port(listen)
    if public_host in WILDCARDS:
        raise DispatcherConfigError(
            f"--listen {listen}: give the address the PBXes send to (Kamailio writes it into "
            "Via and Record-Route), not a wildcard")
    public_host = _ip(public_host, "--listen")
    internal_host, internal_port = host_port(internal, public_port)
    internal_host = _ip(internal_host, "--internal")
    warnings: list[str] = []

    workers: list[Worker] = []
    for index in range(sip.worker_count()):
        listens = {la.transport: la for la in sip.for_worker(index).listen}
        la = listens.get("udp") or listens.get("tcp")
        if la is None:
            raise DispatcherConfigError(
                "the dispatcher needs the workers on UDP or TCP (sip.listen)")
        if la.port == 0:
            raise DispatcherConfigError(
                f"worker {index} listens on port 0 (any free port): give sip.listen fixed ports")
        host = workers_host or (internal_host if la.host in WILDCARDS else la.host)
        workers.append(Worker(index, la.transport, host, la.port))
    transport = workers[0].transport

    # Kamailio's sockets must not take a worker's port.
    for w in workers:
        for la in sip.for_worker(w.index).listen:
            for host, port, what in ((public_host, public_port, "--listen"),
                                     (internal_host, internal_port, "--internal")):
                same_host = la.host in WILDCARDS or la.host == host
                if same_host and la.port == port:
                    raise DispatcherConfigError(
                        f"{what} port {port} is worker {w.index}'s SIP port ({la.transport}): "
                        "move the bridge's sip.listen to other ports")

    trunks = [link for link in sip.links if link.mode == "trunk"]
    if not trunks:
        raise DispatcherConfigError(
            "no trunk-mode company: the dispatcher serves trunk links (register links get their "
            "calls at their home worker's registered Contact)")
    sources = dict(company_sources or {})
    unknown = set(sources) - {t.company for t in trunks}
    if unknown:
        raise DispatcherConfigError(
            f"--company-source names {', '.join(sorted(unknown))}: not a trunk company")
    loopback = ipaddress.ip_address(internal_host).is_loopback
    companies: list[Company] = []
    for k, link in enumerate(trunks):
        if link.company in sources:
            source = _ip(sources[link.company], f"--company-source {link.company}")
        elif k == 0:
            source = internal_host
        elif loopback and ipaddress.ip_address(internal_host).version == 4:
            source = f"127.0.1.{k}"
        else:
            raise DispatcherConfigError(
                f"several trunk companies: give {link.company} its own address towards the "
                f"workers with --company-source {link.company}=IP")
        networks = tuple(str(ipaddress.ip_network(s, strict=False)) for s in link.allowed_sources)
        companies.append(Company(link.company, networks, source))

    seen: dict[str, str] = {}
    routes = [LinkRoute.of(link) for link in trunks]
    for company in companies:
        if company.source in seen:
            raise DispatcherConfigError(
                f"{company.slug} and {seen[company.source]} would both reach the workers from "
                f"{company.source}: the workers could not tell them apart")
        seen[company.source] = company.slug
        # the workers attribute a request to the first trunk that admits its source
        first = next((r.company for r in routes if r.admits(company.source)), None)
        if first is None:
            raise DispatcherConfigError(
                f"companies.{company.slug}.pbx.allowed_sources must include {company.source}, "
                "the dispatcher's address for it: the workers see requests coming from there")
        if first != company.slug:
            raise DispatcherConfigError(
                f"the workers would take {company.slug}'s calls (from the dispatcher's "
                f"{company.source}) for {first}'s: {first}'s allowed_sources include "
                f"{company.source}; narrow them or pick another --company-source")
    return Plan(public_host, public_port, internal_port, transport, tuple(workers),
                tuple(companies), tuple(warnings))


def _companies_block(p: Plan) -> str:
    out = ["\t$avp(company) = $null;"]
    for c in p.companies:
        if not c.networks:
            continue
        cond = " || ".join(f'is_in_subnet("$si", "{n}")' for n in c.networks)
        out += [
            f"\tif ({cond}) {{",
            f'\t\t$avp(company) = "{c.slug}";',
            f'\t\t$avp(sock) = "{p.socket(c.source)}";',
            "\t\treturn;",
            "\t}",
        ]
    return "\n".join(out)


def render(
    p: Plan,
    list_path: Path,
    *,
    template: Path = TEMPLATE,
    ctl: str | None = "unix:/run/kamailio/kamailio_ctl",
    ping_interval_s: int = DEFAULT_PING_INTERVAL_S,
    fr_timer_ms: int = DEFAULT_FR_TIMER_MS,
    ping_failures: int = DEFAULT_PING_FAILURES,
    debug: int = 2,
    children: int = 4,
) -> tuple[str, str]:
    """The Kamailio config text and the dispatcher list text."""
    ping_host = p.companies[0].source
    ping_host = f"[{ping_host}]" if ":" in ping_host else ping_host
    values = {
        "PUBLIC": f"{p.public_host}:{p.public_port} (UDP and TCP)",
        "LISTEN": "\n".join(p.listen_lines()),
        "DS_LIST": str(list_path),
        "PING_INTERVAL": str(ping_interval_s),
        "PING_FROM": f"sip:dispatcher@{ping_host}",
        "PING_SOCKET": p.socket(p.companies[0].source),
        "FR_TIMER_MS": str(fr_timer_ms),
        "PING_FAILURES": str(ping_failures),
        "DEBUG": str(debug),
        "CHILDREN": str(children),
        "CTL": (f'loadmodule "ctl.so"\nmodparam("ctl", "binrpc", "{ctl}")' if ctl else ""),
        "COMPANIES": _companies_block(p),
    }
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    if "@@" in text.replace("@@@", ""):
        leftover = text[text.index("@@"):][:40]
        raise DispatcherConfigError(f"template placeholder not filled: {leftover!r}")
    lines = ["# setid destination flags priority attributes (one SIP worker a line)"]
    lines += [f"1 {w.uri} 0 0 duid=worker{w.index}" for w in p.workers]
    return text, "\n".join(lines) + "\n"


def write(
    p: Plan, out: Path, list_path: Path | None = None, **kwargs: object
) -> tuple[Path, Path]:
    """Write the config and its list (next to it, ``.list``); returns both paths."""
    out = Path(out).resolve()
    list_path = Path(list_path).resolve() if list_path else out.with_suffix(".list")
    cfg_text, list_text = render(p, list_path, **kwargs)  # type: ignore[arg-type]
    out.write_text(cfg_text)
    list_path.write_text(list_text)
    return out, list_path


def describe(p: Plan) -> str:
    lines = [f"dispatcher on {p.public_host}:{p.public_port} (udp, tcp) in front of "
             f"{len(p.workers)} worker(s):"]
    lines += [f"  worker {w.index}: {w.uri}" for w in p.workers]
    for c in p.companies:
        lines.append(f"  {c.slug}: from {', '.join(c.networks)}; to the workers from {c.source}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.sip.dispatcher",
        description="Write a Kamailio dispatcher config for the bridge's SIP workers.")
    parser.add_argument("-c", "--config", required=True, help="the bridge's config.yaml")
    parser.add_argument("-o", "--output", required=True, help="Kamailio config to write")
    parser.add_argument("--list", help="dispatcher list to write (default: OUTPUT with .list)")
    parser.add_argument("--listen", required=True,
                        help="the public SIP address HOST:PORT the PBXes send to (UDP and TCP)")
    parser.add_argument("--internal", default="127.0.0.1",
                        help="Kamailio's address[:port] towards the workers "
                             "(default 127.0.0.1, port of --listen)")
    parser.add_argument("--company-source", action="append", default=[], metavar="SLUG=IP",
                        help="the address a trunk company's requests reach the workers from "
                             "(default: --internal for the first, 127.0.1.N for the others)")
    parser.add_argument("--workers-host",
                        help="the workers' address when sip.listen binds a wildcard "
                             "(default: the --internal address)")
    parser.add_argument("--ping-interval", type=int, default=DEFAULT_PING_INTERVAL_S,
                        help="seconds between OPTIONS pings to each worker")
    parser.add_argument("--fr-timer", type=int, default=DEFAULT_FR_TIMER_MS,
                        help="ms a worker has to answer before the next one is tried")
    parser.add_argument("--ping-failures", type=int, default=DEFAULT_PING_FAILURES,
                        help="unanswered pings in a row before a worker is taken out")
    parser.add_argument("--ctl", default="unix:/run/kamailio/kamailio_ctl",
                        help="kamcmd control socket ('' for none)")
    parser.add_argument("--template", default=str(TEMPLATE), help="config template")
    parser.add_argument("--debug", type=int, default=2, help="Kamailio log level")
    parser.add_argument("--children", type=int, default=4, help="Kamailio worker processes")
    args = parser.parse_args(argv)

    from ..config import ConfigError, load_config
    from .from_bridge_config import sip_config

    sources: dict[str, str] = {}
    for item in args.company_source:
        slug, sep, ip = item.partition("=")
        if not sep:
            parser.error(f"--company-source {item!r}: write SLUG=IP")
        sources[slug] = ip
    try:
        sip = sip_config(load_config(args.config, allow_generate=True))
        p = plan(sip, args.listen, args.internal, sources, args.workers_host)
        cfg, lst = write(p, Path(args.output), Path(args.list) if args.list else None,
                         template=Path(args.template), ctl=args.ctl or None,
                         ping_interval_s=args.ping_interval, fr_timer_ms=args.fr_timer,
                         ping_failures=args.ping_failures,
                         debug=args.debug, children=args.children)
    except (ConfigError, DispatcherConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(p))
    for w in p.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {cfg} and {lst}; check with: kamailio -c -f {cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
