"""sipp as a scripted SIP peer: UAS echo/reject/ring, UAC call and MESSAGE, MESSAGE sink.

Each run renders its scenario (tests/peers/scenarios/*.xml, ``@@NAME@@`` parts filled in
here, ``[key]`` parts passed as ``-key``) into its own work folder and runs sipp in the
foreground under :class:`~tests.peers.procs.Process` with message, error and log traces in
that folder. Exit code 0 means the scenario passed (sipp: 0 all calls OK, 1 some failed,
97 exit on internal command, 99 no call processed, 255/254 fatal errors).

Everything binds 127.0.0.1 only (``-i``, ``-mi``, ``-ci``, ``-bind_local``); the SIP, media
and control ports are picked free at run time.

Quirks of the Debian bookworm sipp (3.6.1, built with PCAP and RTPSTREAM):
- ``-rtp_echo`` echoes whatever reaches ``-mp`` (and ``-mp``+2) back to its sender.
- ``<exec rtp_stream="file,loops,pt"/>`` sends a raw payload file (no header parsing) from
  the ``-mp`` socket to the address in the peer's SDP; payload type 0 means PCMU, 160 bytes
  per 20 ms packet. The file is made here from :mod:`bridge.media.tone`.
- ``<pause/>`` without ``milliseconds`` uses ``-d``: that is how hold and ring times are set.
- Keywords are not replaced in XML attributes, hence the ``@@...@@`` rendering.
- There is no escape for ``[`` and ``]`` in message text: they are sent as ``[lb]``/``[rb]``
  keys (a key's value is not parsed again).
- Message text lines lose their leading whitespace (sipp strips indentation).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.media import tone
from tests.peers.ports import LOOPBACK, free_port, free_rtp_port
from tests.peers.procs import Process, ProcessError, wait_until

SIPP = "/usr/bin/sipp"
SCENARIOS = Path(__file__).with_name("scenarios")
DTMF_PCAPS = Path("/usr/share/sip-tester")
_counter = itertools.count(1)

REASONS = {
    200: "OK",
    202: "Accepted",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
}


@dataclass(frozen=True)
class SipMessage:
    """One SIP message from sipp's message trace."""

    direction: str  # "received" or "sent"
    start_line: str
    fields: list[tuple[str, str]]  # (lower-case name, value) in message order
    body: str

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case header names to their first (topmost) value."""
        out: dict[str, str] = {}
        for name, value in self.fields:
            out.setdefault(name, value)
        return out

    @property
    def method(self) -> str | None:
        first = self.start_line.split(" ", 1)[0]
        return None if first.startswith("SIP/") else first

    @property
    def status(self) -> int | None:
        parts = self.start_line.split(" ", 2)
        return int(parts[1]) if parts[0].startswith("SIP/") and len(parts) > 1 else None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), None if absent."""
        return self.headers.get(name.lower())

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name``, top to bottom."""
        return [v for n, v in self.fields if n == name.lower()]


_TRACE_SPLIT = re.compile(
    r"^-{20,} [^\n]*\n(UDP|TCP|TLS|SCTP) message (received|sent)[^\n]*:\n\n", re.MULTILINE
)


def parse_message_trace(text: str) -> list[SipMessage]:
    """Parse sipp's ``-trace_msg`` log into messages, in order."""
    parts = _TRACE_SPLIT.split(text)
    out: list[SipMessage] = []
    # parts = [prefix, transport, direction, message, transport, direction, message, ...]
    for i in range(1, len(parts) - 2, 3):
        direction, raw = parts[i + 1], parts[i + 2]
        sep = "\r\n\r\n" if "\r\n\r\n" in raw else "\n\n"
        head, _, body = raw.partition(sep)
        lines = head.replace("\r\n", "\n").split("\n")
        fields: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                fields.append((name.strip().lower(), value.strip()))
        lengths = [v for n, v in fields if n in ("content-length", "l")]
        length = lengths[0] if lengths else None
        body_bytes = body.encode()
        if length is not None and length.isdigit():
            body_bytes = body_bytes[: int(length)]
        else:
            body_bytes = body_bytes.rstrip(b"\r\n")
        out.append(
            SipMessage(direction, lines[0].strip(), fields, body_bytes.decode(errors="replace"))
        )
    return out


class Sipp:
    """One sipp process running one scenario.

    ``remote`` is ``host:port`` to send to (UAC scenarios, or a UAS that starts nothing
    needs none). ``keys`` become ``-key k v``; ``template`` fills ``@@NAME@@`` parts of the
    scenario file. ``duration_ms`` is sipp's ``-d`` (the length of ``<pause/>``).
    """

    def __init__(
        self,
        workdir: Path,
        scenario: str,
        remote: str | None = None,
        local_port: int | None = None,
        transport: str = "udp",
        service: str = "sipp",
        calls: int = 1,
        duration_ms: int = 0,
        rtp_echo: bool = False,
        media_port: int | None = None,
        keys: Mapping[str, str] | None = None,
        template: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout_s: float = 60.0,
        name: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if transport not in ("udp", "tcp"):
            raise ValueError("transport must be udp or tcp")
        if remote is not None and not remote.startswith("127."):
            raise ValueError(f"sipp talks to loopback only, not {remote}")
        self.scenario = scenario
        self.name = name or f"sipp-{scenario}-{next(_counter)}"
        self.workdir = Path(workdir) / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.remote = remote
        self.transport = transport
        self.local_port = local_port or free_port()
        self.media_port = media_port or free_rtp_port()
        self.control_port = free_port(udp=True, tcp=False)
        self.service = service
        self.keys = dict(keys or {})
        self.template = dict(template or {})
        self.scenario_path = self.workdir / f"{scenario}.xml"
        self.message_log = self.workdir / "messages.log"
        self.error_log = self.workdir / "errors.log"
        self.actions_log = self.workdir / "actions.log"
        self.calls = calls
        self.duration_ms = duration_ms
        self.rtp_echo = rtp_echo
        self.auth = auth
        self.timeout_s = timeout_s
        self.extra_args = list(extra_args)
        self.proc = Process("sipp", [SIPP], self.workdir, env={"TERM": "dumb"})

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """Where this sipp listens for SIP: ``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.local_port}"

    def uri(self, user: str | None = None) -> str:
        """``sip:USER@127.0.0.1:PORT`` (with ``;transport=tcp`` over TCP)."""
        suffix = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{user or self.service}@{self.address}{suffix}"

    def render(self) -> Path:
        text = (SCENARIOS / f"{self.scenario}.xml").read_text()
        for key, value in self.template.items():
            text = text.replace(f"@@{key}@@", value)
        left = re.findall(r"@@([A-Z_]+)@@", text)
        if left:
            raise ValueError(f"scenario {self.scenario}: no value for {sorted(set(left))}")
        self.scenario_path.write_text(text)
        return self.scenario_path

    def argv(self) -> list[str]:
        """The sipp command line."""
        argv: list[str] = [SIPP]
        if self.remote:
            argv.append(self.remote)
        # fmt: off
        argv += [
            "-sf", str(self.scenario_path),
            "-i", LOOPBACK, "-p", str(self.local_port), "-bind_local",
            "-t", "u1" if self.transport == "udp" else "t1",
            "-mi", LOOPBACK, "-mp", str(self.media_port),
            "-ci", LOOPBACK, "-cp", str(self.control_port),
            "-m", str(self.calls), "-l", str(max(1, self.calls)),
            "-s", self.service, "-d", str(self.duration_ms),
            "-default_behaviors", "abortunexp,pingreply", "-nostdin",
            "-timeout", f"{max(1, round(self.timeout_s))}s", "-timeout_error",
            "-trace_msg", "-message_file", str(self.message_log),
            "-trace_err", "-error_file", str(self.error_log),
            "-trace_logs", "-log_file", str(self.actions_log),
            "-key", "lb", "[", "-key", "rb", "]",
        ]
        # fmt: on
        if self.rtp_echo:
            argv.append("-rtp_echo")
        if self.auth:
            argv += ["-au", self.auth[0], "-ap", self.auth[1]]
        for k, v in self.keys.items():
            argv += ["-key", k, v]
        return argv + self.extra_args

    def start(self, timeout: float = 5.0) -> Sipp:
        """Start sipp; a UAS (no ``remote``) is waited for until its SIP port is bound."""
        self.render()
        self.proc.argv = self.argv()
        self.proc.start()
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM

        if self.remote is not None:
            return self

        def ready() -> bool:
            if not self.proc.alive():
                raise ProcessError(f"{self.name} exited at start\n{self.report()}")
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((LOOPBACK, self.local_port))
                except OSError:
                    return True
            return False

        wait_until(ready, timeout, interval=0.02, what=f"{self.name} listening")
        return self

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for sipp to finish; its exit code (0 = the scenario passed)."""
        return self.proc.wait(timeout)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait and raise ProcessError with the traces unless the scenario passed."""
        try:
            rc = self.wait(timeout)
        except TimeoutError:
            self.stop(settle=0)
            raise ProcessError(
                f"{self.name} did not finish in {timeout} s\n{self.report()}"
            ) from None
        if rc != 0:
            raise ProcessError(f"{self.name} exited with {rc}\n{self.report()}")

    def stop(self, settle: float | None = None) -> int | None:
        """Stop sipp. A UAS (no ``remote``) first gets ``settle`` seconds (3 by default) to
        finish its scenario on its own: stopped right after a hang-up, it would die before
        answering the BYE or CANCEL, and the bridge's retransmissions would then reach the
        next PBX started on the same port (the end-to-end tests share trunkco's)."""
        if settle is None:
            settle = 3.0 if self.remote is None else 0.0
        if settle > 0 and self.proc.alive():
            with contextlib.suppress(TimeoutError):
                self.proc.wait(settle)
        return self.proc.stop(grace=3.0)

    def alive(self) -> bool:
        return self.proc.alive()

    def __enter__(self) -> Sipp:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- results ---------------------------------------------------------------------------

    def messages(self) -> list[SipMessage]:
        """Every SIP message sipp sent or received so far."""
        try:
            return parse_message_trace(self.message_log.read_bytes().decode(errors="replace"))
        except FileNotFoundError:
            return []

    def received(self, method: str | None = None) -> list[SipMessage]:
        return [
            m
            for m in self.messages()
            if m.direction == "received" and (method is None or m.method == method)
        ]

    def received_messages(self) -> list[str]:
        """Bodies of the SIP MESSAGE requests received, in order."""
        return [m.body for m in self.received("MESSAGE")]

    def received_statuses(self) -> list[int]:
        return [s for m in self.received() if (s := m.status) is not None]

    def report(self) -> str:
        """The tail of sipp's output and error trace, for assertion messages."""

        def tail(p: Path, n: int = 40) -> str:
            try:
                return "\n".join(p.read_text(errors="replace").splitlines()[-n:])
            except FileNotFoundError:
                return ""

        return (
            f"--- {self.proc.log_path}\n{self.proc.log_tail(30)}\n"
            f"--- {self.error_log}\n{tail(self.error_log)}"
        )

    # -- ready-made peers ------------------------------------------------------------------

    @classmethod
    def uas_echo(
        cls, workdir: Path, hangup_after_ms: int | None = None, calls: int = 1, **kw: Any
    ) -> Sipp:
        """Answers with PCMU + telephone-event and echoes RTP; waits for BYE, or sends BYE
        itself ``hangup_after_ms`` after the ACK."""
        if hangup_after_ms is None:
            return cls(workdir, "uas_echo", calls=calls, rtp_echo=True, **kw)
        return cls(
            workdir,
            "uas_echo_bye",
            calls=calls,
            rtp_echo=True,
            duration_ms=hangup_after_ms,
            **kw,
        )

    @classmethod
    def uas_reject(
        cls,
        workdir: Path,
        code: int = 486,
        reason: str | None = None,
        calls: int = 1,
        **kw: Any,
    ) -> Sipp:
        """100 Trying, then ``code reason``, then waits for the ACK."""
        if not 300 <= code <= 699:
            raise ValueError("a rejection is a 3xx-6xx code")
        reason = reason or REASONS.get(code, "Rejected")
        if not re.fullmatch(r"[A-Za-z0-9 .,'()-]+", reason):
            raise ValueError(f"unsupported characters in reason {reason!r}")
        template = {"CODE": str(code), "REASON": reason}
        return cls(workdir, "uas_reject", calls=calls, template=template, **kw)

    @classmethod
    def uas_ring(
        cls, workdir: Path, answer_after_ms: int | None = None, calls: int = 1, **kw: Any
    ) -> Sipp:
        """Rings (180); never answers and handles CANCEL (200 + 487), or answers with an
        RTP echo after ``answer_after_ms`` and waits for BYE."""
        if answer_after_ms is None:
            return cls(workdir, "uas_ring", calls=calls, **kw)
        return cls(
            workdir,
            "uas_ring_answer",
            calls=calls,
            rtp_echo=True,
            duration_ms=answer_after_ms,
            **kw,
        )

    @classmethod
    def uas_message(cls, workdir: Path, count: int = 1, **kw: Any) -> Sipp:
        """Answers ``count`` MESSAGE requests with 200; read them with received_messages()."""
        return cls(workdir, "uas_message", calls=count, **kw)

    @classmethod
    def uac_call(
        cls,
        workdir: Path,
        remote: str,
        ruri: str,
        from_user: str = "sipp",
        from_host: str | None = None,
        hold_ms: int = 2000,
        tone_hz: float | None = 1000.0,
        tone_dbfs: float = -12.0,
        expect: int = 200,
        auth: tuple[str, str] | None = None,
        dtmf: str = "",
        **kw: Any,
    ) -> Sipp:
        """INVITE ``ruri`` via ``remote`` (host:port); handles 1xx and one 401/407. On 200:
        ACK, stream a PCMU sine of ``tone_hz`` (None: no RTP), hold ``hold_ms``, BYE.
        With another ``expect`` code: the scenario passes when exactly that code comes.

        ``dtmf`` digits (0-9, *, #) are sent as RFC 4733 events (payload type 101) after
        the ACK, 500 ms apart, by replaying sipp's own pcap files: that needs raw sockets
        (root) and the events come with their own SSRC, beside the tone stream."""
        peer = cls(
            workdir,
            "uac_call",
            remote=remote,
            duration_ms=hold_ms,
            auth=auth,
            service=ruri.split(":", 1)[-1].split("@", 1)[0],
            **kw,
        )
        media = ""
        if tone_hz is not None and expect == 200:
            pcm = tone.sine(tone_hz, 8000, 8000, tone_dbfs).tobytes()  # 1 s, looped
            payload = peer.workdir / f"tone{round(tone_hz)}.ulaw"
            payload.write_bytes(tone.pcm_to_ulaw(pcm))
            media = f'<nop><action><exec rtp_stream="{payload},-1,0" /></action></nop>'
        for digit in dtmf:
            name = {"*": "star", "#": "pound"}.get(digit, digit)
            pcap = DTMF_PCAPS / f"dtmf_2833_{name}.pcap"
            if not pcap.exists():
                raise ValueError(f"no DTMF pcap for {digit!r}")
            media += (
                f'\n  <pause milliseconds="400" />'
                f'\n  <nop><action><exec rtp_stream="pause" /></action></nop>'
                f'\n  <nop><action><exec play_pcap_audio="{pcap}" /></action></nop>'
                f'\n  <pause milliseconds="300" />'
                f'\n  <nop><action><exec rtp_stream="resume" /></action></nop>'
            )
        if expect == 200:
            final = '<recv response="200" rtd="true" rrs="true" next="answered" />'
        else:
            final = f'<recv response="{expect}" next="rejected" />'
        peer.keys.update(
            {"ruri": ruri, "from_user": from_user, "from_host": from_host or remote.split(":")[0]}
        )
        peer.template.update({"FINAL": final, "MEDIA": media, "EXPECT": str(expect)})
        return peer

    @classmethod
    def uac_message(
        cls,
        workdir: Path,
        remote: str,
        ruri: str,
        body: str,
        from_user: str = "sipp",
        from_host: str | None = None,
        expect: int | None = None,
        auth: tuple[str, str] | None = None,
        **kw: Any,
    ) -> Sipp:
        """One MESSAGE (text/plain; charset=UTF-8) with ``body`` to ``ruri`` via ``remote``.
        Passes on 200 or 202 (``expect=None``), or on exactly ``expect``."""
        peer = cls(workdir, "uac_message", remote=remote, auth=auth, **kw)
        if expect is None:
            final = (
                '<recv response="200" optional="true" next="end" />\n'
                '  <recv response="202" next="end" />'
            )
        else:
            final = f'<recv response="{expect}" next="end" />'
        peer.keys.update(
            {"ruri": ruri, "from_user": from_user, "from_host": from_host or remote.split(":")[0]}
        )
        peer.template.update(
            {
                "FINAL": final,
                "EXPECT": "200/202" if expect is None else str(expect),
                "BODY": _sipp_text(body),
            }
        )
        return peer


def _sipp_text(text: str) -> str:
    """Message text for a scenario's CDATA: brackets become the keys [lb] and [rb]."""
    if "\r" in text:
        raise ValueError("use \\n for line breaks")
    return "".join({"[": "[lb]", "]": "[rb]"}.get(c, c) for c in text)
