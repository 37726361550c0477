"""Run one of tests/sip/scenarios with sipp on 127.0.0.1 (ports chosen free at run time).

A small runner for the SIP worker tests: UAS scenarios (answer with RTP echo, reject, early
media, MESSAGE) wait for the bridge; UAC scenarios call or text it. The process is ours and
stopped by its PID (tests.peers.procs).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from tests.peers.ports import LOOPBACK, free_port, free_rtp_port
from tests.peers.procs import Process

SCENARIOS = Path(__file__).with_name("scenarios")
DTMF_PCAP = "/usr/share/sip-tester/dtmf_2833_{}.pcap"


def _udp_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


class Sipp:
    def __init__(
        self,
        workdir: Path,
        scenario: str,
        *,
        remote: str | None = None,
        service: str = "100",
        keys: Mapping[str, str] | None = None,
        template: Mapping[str, str] | None = None,
        calls: int = 1,
        rtp_echo: bool = False,
        timeout_s: int = 30,
        name: str | None = None,
        port: int | None = None,
    ) -> None:
        self.scenario = scenario
        self.port = port or free_port()
        self.media_port = free_rtp_port()
        self.remote = remote
        workdir = Path(workdir)
        path = SCENARIOS / f"{scenario}.xml"
        if template:
            # values sipp checks when it loads the file (response codes) cannot be -key values
            text = path.read_text()
            for key, value in template.items():
                text = text.replace(f"@@{key}@@", value)
            workdir.mkdir(parents=True, exist_ok=True)
            path = workdir / f"{scenario}.xml"
            path.write_text(text)
        argv = [
            "sipp", "-sf", str(path),
            "-i", LOOPBACK, "-p", str(self.port), "-mi", LOOPBACK, "-mp", str(self.media_port),
            "-m", str(calls), "-l", str(max(calls, 1)), "-timeout", f"{timeout_s}s",
            "-timeout_error", "-trace_err", "-trace_msg", "-nostdin", "-s", service,
        ]
        if rtp_echo:
            argv.append("-rtp_echo")
        for key, value in (keys or {}).items():
            argv += ["-key", key, value]
        if remote:
            argv.append(remote)
        self.proc = Process(name or f"sipp-{scenario}-{self.port}", argv, workdir)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Sipp:
        self.proc.start()
        deadline = time.monotonic() + 5
        while not _udp_bound(self.port):
            if not self.proc.alive():
                raise RuntimeError(f"sipp {self.scenario} exited:\n{self.proc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sipp {self.scenario} did not bind {self.port}")
            time.sleep(0.02)
        return self

    async def done(self, timeout_s: float = 30.0) -> int:
        """Exit code, waited for in a thread (the event loop keeps running the bridge)."""
        return await asyncio.to_thread(self.proc.wait, timeout_s)

    def stop(self) -> None:
        self.proc.stop(grace=2.0)

    def messages(self) -> str:
        """sipp's -trace_msg log (every SIP message it sent and received)."""
        logs = sorted(self.proc.workdir.glob(f"{self.scenario}_{self.proc.pid}_messages.log"))
        return "\n".join(p.read_text(errors="replace") for p in logs)

    def errors(self) -> str:
        logs = sorted(self.proc.workdir.glob(f"{self.scenario}_{self.proc.pid}_errors.log"))
        return "\n".join(p.read_text(errors="replace") for p in logs)

    def explain(self) -> str:
        return (f"sipp {self.scenario} rc={self.proc.returncode}\n--- log\n"
                f"{self.proc.log_tail(30)}\n--- errors\n{self.errors()[-3000:]}\n--- messages\n"
                f"{self.messages()[-6000:]}")
