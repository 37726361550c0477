"""Run one of tests/sip/scenarios with sipp on 127.0.0.1 (ports chosen free at run time).

A small runner for the SIP worker tests: UAS scenarios (answer with RTP echo, reject, early
media, MESSAGE) wait for the bridge; UAC scenarios call or text it. The process is ours and
stopped by its PID (tests.peers.procs).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path

from tests.peers.ports import LOOPBACK, free_port, free_rtp_port
from tests.peers.procs import Process

SCENARIOS = Path(__file__).with_name("scenarios")
DTMF_PCAP = "/usr/share/sip-tester/dtmf_2833_{}.pcap"


def _udp_bound_by(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a UDP socket bound to ``port`` (/proc/net/udp's inode of
    that port among the process's open sockets): bound by sipp, not by whoever else."""
    inodes = set()
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) in inodes for fd in fds.iterdir())
    except OSError:  # the process ended meanwhile
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
        self._own_ports = port is None
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
        self._workdir = workdir
        self._name = name
        self._options = [
            "-m", str(calls), "-l", str(max(calls, 1)), "-timeout", f"{timeout_s}s",
            "-timeout_error", "-trace_err", "-trace_msg", "-nostdin", "-s", service,
        ]
        if rtp_echo:
            self._options.append("-rtp_echo")
        for key, value in (keys or {}).items():
            self._options += ["-key", key, value]
        if remote:
            self._options.append(remote)
        self._path = path
        self.proc = self._process()

    def _process(self) -> Process:
        argv = ["sipp", "-sf", str(self._path), "-i", LOOPBACK, "-p", str(self.port),
                "-mi", LOOPBACK, "-mp", str(self.media_port), *self._options]
        return Process(self._name or f"sipp-{self.scenario}-{self.port}", argv, self._workdir)

    def _lost_its_port(self) -> bool:
        """sipp could not bind: another process took a port between our check and its bind
        (they come from the kernel's ephemeral range, which every bind to port 0 shares)."""
        logs = self.proc.workdir.glob(f"{self.scenario}_{self.proc.pid}_errors.log")
        return any("errno = 98" in p.read_text(errors="replace") for p in logs)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Sipp:
        for attempt in range(3):
            self.proc.start()
            deadline = time.monotonic() + 5
            while self.proc.alive():
                if _udp_bound_by(self.proc.pid, self.port):
                    return self
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sipp {self.scenario} did not bind {self.port}")
                time.sleep(0.02)
            if not (self._own_ports and attempt < 2 and self._lost_its_port()):
                raise RuntimeError(f"sipp {self.scenario} exited:\n{self.proc.log_tail()}")
            self.port, self.media_port = free_port(), free_rtp_port()
            self.proc = self._process()
        raise AssertionError("unreachable")

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
