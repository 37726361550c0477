"""Headless baresip as a registered PBX extension, driven over ctrl_tcp.

Its own config folder (``baresip -f DIR``) holds ``config`` and ``accounts``: SIP on
127.0.0.1 only, no sound card (``aufile`` plays a WAV as the microphone, no player), every
call's audio recorded by ``sndfile`` (``dump-<time>-dec.wav`` is what it received,
``-enc.wav`` what it sent), auto answer, G.711 (and G.722 when the module exists), RFC 4733
telephone-event, commands and events as netstring JSON on a free loopback TCP port.

Quirks of Debian bookworm's baresip 1.0.0 (modules in /usr/lib/baresip/modules):
- The ctrl_tcp commands are the menu module's long names: ``dial``, ``accept``,
  ``hangup``, ``sndcode`` (send DTMF), ``reginfo``, ``listcalls``, ``answermode``.
- ``aufile`` needs a mono 16-bit WAV at exactly ``ausrc_srate``; at its end the source
  stops (the call stays up, silent), so the default WAV is long.
- ``sndfile`` names files by the second the call's audio started: two calls in the same
  second share a file name. Its WAV header is only finalised when the call ends; read a
  recording after hangup (read_wav() copes with an unfinished header anyway).
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bridge.media import tone
from tests.peers.ports import LOOPBACK, free_port, free_port_block
from tests.peers.procs import Process, ProcessError, wait_until

BARESIP = "/usr/bin/baresip"
MODULE_PATH = Path("/usr/lib/baresip/modules")
_counter = itertools.count(1)

Event = dict[str, Any]
#: How baresip 1.0.0 names codecs in an account's audio_codecs (name/rate/channels).
_CODEC_IDS = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1", "G722": "G722/16000/1"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BaresipError(ProcessError):
    """baresip refused a command or did not reach the awaited state."""


class Baresip:
    """A baresip user agent registered as ``user`` at ``registrar`` (host:port).

    ``play_wav`` is what it sends in calls (default: a ``tone_hz`` sine made with
    :mod:`bridge.media.tone`); what it receives is recorded into ``record_dir``.
    ``answermode`` is ``auto`` (answer at once), ``manual`` (use :meth:`accept`) or
    ``early``. With ``register=False`` it only listens (call it at :attr:`contact`).
    ``codecs`` in order of preference (G722 is dropped when its module is missing);
    recordings are at the codec's rate (8000 Hz for G.711, 16000 Hz for G.722).
    """

    def __init__(
        self,
        workdir: Path,
        user: str = "101",
        password: str | None = "pw101",
        registrar: str | None = None,
        domain: str | None = None,
        play_wav: Path | None = None,
        record_dir: Path | None = None,
        tone_hz: float = 800.0,
        tone_dbfs: float = -12.0,
        rate: int = 8000,
        answermode: str = "auto",
        transport: str = "udp",
        codecs: Sequence[str] = ("PCMU", "PCMA", "G722"),
        regint: int = 60,
        register: bool = True,
        sip_port: int | None = None,
        name: str | None = None,
    ) -> None:
        if answermode not in ("auto", "manual", "early"):
            raise ValueError("answermode must be auto, manual or early")
        if transport not in ("udp", "tcp"):
            raise ValueError("transport must be udp or tcp")
        if registrar is not None and not registrar.startswith("127."):
            raise ValueError(f"baresip talks to loopback only, not {registrar}")
        if register and registrar is None:
            raise ValueError("registrar (host:port) is needed to register")
        self.name = name or f"baresip-{user}-{next(_counter)}"
        self.workdir = Path(workdir) / self.name
        self.confdir = self.workdir / "conf"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.password = password
        self.registrar = registrar
        self.domain = domain or (registrar.split(":")[0] if registrar else LOOPBACK)
        self.rate = rate
        self.record_dir = Path(record_dir) if record_dir else self.workdir / "rec"
        self.record_dir.mkdir(parents=True, exist_ok=True)
        if play_wav is None:
            play_wav = tone.write_wav(
                self.workdir / f"tone{round(tone_hz)}.wav", tone_hz, 120.0, rate, tone_dbfs
            )
        self.play_wav = Path(play_wav)
        self.answermode = answermode
        self.transport = transport
        have_g722 = (MODULE_PATH / "g722.so").exists()
        self.codecs = [c for c in codecs if c != "G722" or have_g722]
        self.regint = regint
        self.register = register
        self._own_sip_port = sip_port is None
        # baresip binds SIP on the port and SIP over TLS on the next one.
        self.sip_port = sip_port or free_port_block(2)
        self.ctrl_port = free_port(udp=False, tcp=True)
        self.proc = Process("baresip", [BARESIP, "-4", "-f", str(self.confdir)], self.workdir)
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self._responses: dict[str, Event] = {}
        self._tokens = itertools.count(1)
        self._send_lock = threading.Lock()

    # -- addresses -------------------------------------------------------------------------

    @property
    def aor(self) -> str:
        """The address of record, ``sip:USER@DOMAIN``."""
        return f"sip:{self.user}@{self.domain}"

    @property
    def contact(self) -> str:
        """Where this baresip listens, for direct calls: ``sip:USER@127.0.0.1:PORT``."""
        return f"sip:{self.user}@{LOOPBACK}:{self.sip_port}"

    # -- config ----------------------------------------------------------------------------

    def write_config(self) -> None:
        modules = ["g711.so"]
        if "G722" in self.codecs:
            modules.append("g722.so")
        modules += ["aufile.so", "sndfile.so"]
        config = [
            "poll_method epoll",
            f"sip_listen {LOOPBACK}:{self.sip_port}",
            "call_local_timeout 120",
            "call_max_calls 4",
            f"audio_source aufile,{self.play_wav}",
            f"ausrc_srate {self.rate}",
            "ausrc_channels 1",
            "audio_level no",
            "audio_buffer 20-160",
            "ausrc_format s16",
            "auplay_format s16",
            "auenc_format s16",
            "audec_format s16",
            "rtp_tos 0",
            "rtcp_mux no",
            "jitter_buffer_delay 1-10",
            "rtp_stats no",
            f"net_interface {LOOPBACK}",
            f"module_path {MODULE_PATH}",
            *[f"module {m}" for m in modules],
            "module_tmp account.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen {LOOPBACK}:{self.ctrl_port}",
            f"snd_path {self.record_dir}",
            "",
        ]
        (self.confdir / "config").write_text("\n".join(config))
        params = [
            f"answermode={self.answermode}",
            f"audio_codecs={','.join(_CODEC_IDS.get(c, c) for c in self.codecs)}",
            "ptime=20",
            "mwi=no",
            "medianat=",
            "mediaenc=",
        ]
        if self.password is not None:
            params.append(f"auth_pass={self.password}")
        if self.register and self.registrar:
            params += [
                f'outbound="sip:{self.registrar};transport={self.transport}"',
                f"regint={self.regint}",
            ]
        else:
            params.append("regint=0")
        line = f"<sip:{self.user}@{self.domain};transport={self.transport}>;" + ";".join(params)
        (self.confdir / "accounts").write_text(line + "\n")
        (self.confdir / "contacts").write_text("")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Baresip:
        """Start baresip and connect to its ctrl_tcp port (registration runs on its own:
        use :meth:`wait_registered`). Ports this harness chose were free when chosen but
        another process on the machine may take one before baresip binds it: then baresip
        starts again on fresh ports (twice at most)."""
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except BaresipError as e:
                if attempt == 2 or "Address already in use" not in str(e):
                    raise
                if self._own_sip_port:
                    self.sip_port = free_port_block(2)
                self.ctrl_port = free_port(udp=False, tcp=True)
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> Baresip:
        self.write_config()
        with self._cond:
            self._events.clear()
            self._responses.clear()
        self.proc.start()
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.alive():
                raise BaresipError(f"{self.name} exited:\n{self.proc.log_tail()}")
            try:
                sock = socket.create_connection((LOOPBACK, self.ctrl_port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.proc.stop()
                    raise BaresipError(
                        f"{self.name}: ctrl_tcp did not open:\n{self.proc.log_tail()}"
                    ) from None
                time.sleep(0.05)
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(
            target=self._read_loop, args=(sock,), daemon=True, name=f"{self.name}-ctrl"
        )
        self._reader.start()
        return self

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.proc.stop(grace=3.0)
        if self._reader is not None:
            self._reader.join(2.0)
            self._reader = None

    def alive(self) -> bool:
        return self.proc.alive()

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- ctrl_tcp --------------------------------------------------------------------------

    def _read_loop(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while True:
                colon = buf.find(b":")
                if colon <= 0 or not buf[:colon].isdigit():
                    break
                size = int(buf[:colon])
                if len(buf) < colon + 1 + size + 1:
                    break
                payload = buf[colon + 1 : colon + 1 + size]
                buf = buf[colon + 1 + size + 1 :]  # drop the trailing ","
                try:
                    msg = json.loads(payload.decode(errors="replace"))
                except ValueError:
                    continue
                with self._cond:
                    if msg.get("response"):
                        self._responses[str(msg.get("token", ""))] = msg
                    else:
                        msg["_time"] = time.monotonic()
                        self._events.append(msg)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> Event:
        """Run a baresip command; its response ``{"ok": bool, "data": str}``.
        Raises BaresipError when baresip answers ``ok: false``."""
        sock = self._sock
        if sock is None:
            raise BaresipError(f"{self.name} is not running")
        token = f"t{next(self._tokens)}"
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        with self._send_lock:
            sock.sendall(f"{len(body)}:".encode() + body + b",")
        with self._cond:
            if not self._cond.wait_for(lambda: token in self._responses, timeout):
                raise BaresipError(f"{self.name}: no response to {command!r}")
            resp = self._responses.pop(token)
        if not resp.get("ok", False):
            raise BaresipError(f"{self.name}: {command} {params!r} failed: {resp.get('data')}")
        return resp

    @property
    def events(self) -> list[Event]:
        """Every event so far (dicts with ``class``, ``type``, ``param``, ...)."""
        with self._cond:
            return list(self._events)

    def wait_event(
        self,
        types: str | Sequence[str],
        timeout: float = 10.0,
        since: int = 0,
        pred: Callable[[Event], bool] | None = None,
    ) -> Event:
        """The first event of one of ``types`` at index >= ``since`` (and matching
        ``pred``); BaresipError on timeout or if baresip died."""
        wanted = {types} if isinstance(types, str) else set(types)
        found: list[Event] = []

        def check() -> bool:
            for ev in self._events[since:]:
                if ev.get("type") in wanted and (pred is None or pred(ev)):
                    found.append(ev)
                    return True
            return not self.proc.alive()

        with self._cond:
            self._cond.wait_for(check, timeout)
        if not found:
            state = "exited" if not self.proc.alive() else f"no {sorted(wanted)} in {timeout} s"
            raise BaresipError(
                f"{self.name}: {state}; events: {[e.get('type') for e in self.events]}\n"
                f"{self.proc.log_tail(25)}"
            )
        return found[0]

    def mark(self) -> int:
        """The current event count, to wait for events that come after this point."""
        with self._cond:
            return len(self._events)

    # -- registration and calls ------------------------------------------------------------

    def registration_state(self) -> str:
        """``OK`` (registered), ``ERR`` (last attempt failed), ``zzz`` (not yet) or ``""``
        (no registration), from the ``reginfo`` command."""
        data = _ANSI.sub("", str(self.command("reginfo").get("data", "")))
        m = re.search(r"^>\s*\S+\s+(OK|ERR|zzz)\b", data, re.MULTILINE)
        return m.group(1) if m else ""

    def wait_registered(self, timeout: float = 10.0) -> None:
        """Wait until the registrar accepted our REGISTER (200 OK).

        Polls ``reginfo``: ctrl_tcp only reports events to a connected client, and the
        first REGISTER_OK often comes before we connect."""
        states: list[str] = []

        def ok() -> bool:
            if not self.proc.alive():
                raise BaresipError(f"{self.name} exited:\n{self.proc.log_tail()}")
            states.append(self.registration_state())
            return states[-1] == "OK"

        try:
            wait_until(ok, timeout, interval=0.1, what=f"{self.name} registration")
        except TimeoutError:
            raise BaresipError(
                f"{self.name}: not registered after {timeout} s (state {states[-1:]})\n"
                f"{self.proc.log_tail(20)}"
            ) from None

    def wait_registration_failed(self, timeout: float = 10.0) -> None:
        """Wait until a REGISTER attempt has failed (e.g. 401/403 for a wrong password)."""
        wait_until(
            lambda: self.registration_state() == "ERR",
            timeout,
            interval=0.1,
            what=f"{self.name} registration failure",
        )

    def dial(self, uri: str) -> None:
        """Call ``uri`` (a full SIP URI, or a user name at the registrar's domain)."""
        if not uri.startswith("sip:"):
            uri = f"sip:{uri}@{self.domain}"
        self.command("dial", uri)

    def accept(self) -> None:
        self.command("accept")

    def hangup(self) -> None:
        self.command("hangup")

    def send_dtmf(self, digits: str, gap: float = 0.25) -> None:
        """Send DTMF digits in the current call (RFC 4733 telephone-event)."""
        for d in digits:
            self.command("sndcode", d)
            time.sleep(gap)

    def wait_call(
        self, state: str = "CALL_ESTABLISHED", timeout: float = 10.0, since: int = 0
    ) -> Event:
        """Wait for a call event (CALL_INCOMING, CALL_RINGING, CALL_ESTABLISHED,
        CALL_CLOSED...). Waiting for ESTABLISHED fails at once if the call closes."""
        ev = self.wait_event((state, "CALL_CLOSED"), timeout, since)
        if ev["type"] != state:
            raise BaresipError(f"{self.name}: call closed ({ev.get('param')}) before {state}")
        return ev

    @property
    def call_state(self) -> str | None:
        """The type of the latest call event (e.g. ``CALL_ESTABLISHED``), None if none."""
        for ev in reversed(self.events):
            if ev.get("class") == "call" and ev.get("type") not in (
                "CALL_RTCP",
                "CALL_DTMF_START",
                "CALL_DTMF_END",
                "CALL_LOCAL_SDP",
                "CALL_REMOTE_SDP",
                "CALL_RTPESTAB",
                "VU_RX_REPORT",
                "VU_TX_REPORT",
            ):
                return str(ev.get("type"))
        return None

    def received_dtmf(self, since: int = 0) -> str:
        """DTMF digits received (CALL_DTMF_START events at index >= ``since``), in order."""
        return "".join(
            str(ev.get("param", ""))[:1]
            for ev in self.events[since:]
            if ev.get("type") == "CALL_DTMF_START"
        )

    # -- recordings ------------------------------------------------------------------------

    def recordings(self, kind: str = "dec") -> list[Path]:
        """sndfile's recordings, oldest first: ``dec`` = received audio, ``enc`` = sent."""
        return sorted(self.record_dir.glob(f"dump-*-{kind}.wav"), key=lambda p: p.stat().st_mtime)

    def recording(self, kind: str = "dec", timeout: float = 5.0) -> tuple[bytes, int]:
        """PCM and rate of the newest recording of ``kind`` (received audio by default)."""
        wait_until(lambda: self.recordings(kind), timeout, what=f"{self.name} recording")
        return tone.read_wav(self.recordings(kind)[-1])

    def log_text(self) -> str:
        return self.proc.log_text()
