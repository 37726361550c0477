"""The pieces every benchmark starts: Synapse, the bridge, sipp, and what it reads from /proc
and from the bridge's /metrics. All on 127.0.0.1; processes are stopped by PID."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import socket
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.sip import procstat
from tests.harness.bridge_proc import TEST_COMPANIES, BridgeProc
from tests.harness.matrix_user import MatrixUser, login
from tests.harness.synapse import SERVER_NAME, Synapse
from tests.peers.ports import free_port
from tests.peers.sipp import Sipp

BENCH = Path(__file__).resolve().parent
TICKS = procstat.CLK_TCK
PAGE = os.sysconf("SC_PAGE_SIZE")
HS = SERVER_NAME


class BenchSynapse(Synapse):
    """The test Synapse with cheap password hashing: the benchmarks register and log in
    hundreds of users, and bcrypt's default 12 rounds cost ~0.3 s of CPU each."""

    def write_config(self) -> Path:
        path = super().write_config()
        cfg = json.loads(path.read_text())
        cfg["bcrypt_rounds"] = 4
        path.write_text(json.dumps(cfg, indent=1))
        return path


#: /sync's timeline holds 10 events per room by default and skips older ones ("limited"):
#: at 50 messages a second that drops messages from the count
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 1000}}})


class BenchUser(MatrixUser):
    """A Matrix user whose /sync long-polls for 30 s (the test user's 2 s would make a
    hundred idle users cost Synapse CPU during the measurement) and asks for up to 1000
    timeline events per room; ``gaps`` counts syncs that still left events out."""

    sync_timeout_ms = 30000
    sync_filter = SYNC_FILTER
    gaps = 0

    def on_timeline(self, room_id: str, timeline: dict[str, Any], resumed: bool) -> None:
        if timeline.get("limited") and resumed:
            self.gaps += 1


async def bench_login(base_url: str, user_id: str, password: str) -> BenchUser:
    user = await login(base_url, user_id, password, BenchUser)
    assert isinstance(user, BenchUser)
    return user


class UasMedia(Sipp):
    """sipp answering every INVITE with an SDP that points at someone else's RTP port (the
    benchmark's own PBX media process): bench/scenarios/uas_answer_media.xml."""

    def render(self) -> Path:
        text = (BENCH / "scenarios" / f"{self.scenario}.xml").read_text()
        for key, value in self.template.items():
            text = text.replace(f"@@{key}@@", value)
        self.scenario_path.write_text(text)
        return self.scenario_path


@dataclass
class Stack:
    synapse: BenchSynapse
    bridge: BridgeProc
    metrics_port: int
    sip_port: int
    trunk_port: int

    @property
    def sip_address(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.bridge.stop()
        with contextlib.suppress(Exception):
            self.synapse.stop()


def _free(port: int, kinds: tuple[int, ...]) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_block(count: int, udp: bool = True, tcp: bool = True, lo: int = 30000,
               hi: int = 60000) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 (the bridge's workers listen
    on the SIP port + their index, and take RTP ports from one range)."""
    kinds = tuple(k for k, want in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp))
                  if want)
    for _ in range(200):
        base = random.randrange(lo, hi - count) & ~1
        if all(_free(p, kinds) for p in range(base, base + count)):
            return base
    raise OSError(f"no {count} consecutive free ports on 127.0.0.1")


def make_stack(root: Path, *, workers: int, extensions: int = 1,
               log_levels: dict[str, str] | None = None,
               bridge_overrides: dict[str, Any] | None = None) -> Stack:
    """Synapse and the bridge (not started), trunkco pointing at ``trunk_port``."""
    sip_port = free_block(workers)
    rtp_first = free_block(64 * workers, tcp=False)
    taken = set(range(sip_port, sip_port + workers)) | set(range(rtp_first, rtp_first + 64 * workers))
    trunk_port, metrics_port = (next(p for p in iter(free_port, 0) if p not in taken)
                                for _ in range(2))
    company = copy.deepcopy(TEST_COMPANIES["trunkco"])
    company["pbx"]["registrar"] = f"sip:127.0.0.1:{trunk_port}"
    company["pbx"]["max_calls"] = 100000
    company["extensions"] = {str(201 + i): {"name": f"Bench {201 + i}", "public": True}
                             for i in range(extensions)}
    synapse = BenchSynapse(root / "synapse", registrations=[])
    overrides: dict[str, Any] = {
        "companies": {"trunkco": company},
        "sip": {"listen": {"udp": f"127.0.0.1:{sip_port}", "tcp": f"127.0.0.1:{sip_port}"},
                "workers": workers, "codecs": ["PCMU"], "clock_rate": 8000,
                "rtp_ports": f"{rtp_first}-{rtp_first + 64 * workers - 1}"},
        "bridge": {"default_company": None,
                   "limits": {"calls_per_user": 100000, "calls_per_server": 100000,
                              "call_attempts_per_minute": 100000,
                              "messages_per_minute": 1000000}},
        "metrics": {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
        "logging": {"level": "WARNING", "levels": dict(log_levels or {})},
    }
    for section, values in (bridge_overrides or {}).items():
        overrides[section] = {**overrides.get(section, {}), **values}
    bridge = BridgeProc(root / "bridge", synapse.url, HS, overrides=overrides)
    bridge.generate()
    synapse.registrations = [bridge.registration_path]
    return Stack(synapse, bridge, metrics_port, sip_port, trunk_port)


def bench_tmpdir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A scratch folder in RAM when the machine has /dev/shm: Synapse's SQLite commits
    would otherwise wait for the disk, and that is not what the benchmarks measure."""
    shm = Path("/dev/shm")
    return tempfile.TemporaryDirectory(prefix=prefix,
                                       dir=str(shm) if shm.is_dir() else None)


def start_stack(stack: Stack) -> None:
    stack.synapse.start()
    stack.bridge.start()


# --- /proc ---------------------------------------------------------------------------------
def proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of one process, None when it is gone."""
    try:
        fields = procstat.stat_fields(pid)
    except OSError:
        return None
    return procstat.cpu_seconds(fields), int(fields[procstat.RSS_PAGES]) * PAGE


def thread_stats(pid: int) -> dict[int, tuple[str, float]]:
    """{tid: (name, CPU seconds)} of one process's threads."""
    out: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            name = text[text.index("(") + 1: text.rindex(")")]
            out[int(tid)] = (name, procstat.cpu_seconds(procstat.parse(text)))
    return out


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parents[int(d)] = int(procstat.stat_fields(int(d))[procstat.PPID])
            except (OSError, ValueError):
                continue
    return parents


def children(pid: int) -> list[int]:
    """The processes ``pid`` started itself: for the bridge, its workers' fork server."""
    return [p for p, parent in _parents().items() if parent == pid]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: for the bridge, the fork server and the workers it
    forked (bridge/sip/forkserver.py)."""
    parents = _parents()
    out: list[int] = []
    todo = [pid]
    while todo:
        above = todo.pop()
        kids = [p for p, parent in parents.items() if parent == above]
        out += kids
        todo += kids
    return out


def machine_busy() -> tuple[float, float]:
    """(busy jiffies, total jiffies) of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICKS, sum(fields) / TICKS


class CpuSampler:
    """CPU % of one core for named groups of processes between ``start`` and ``stop``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._before: dict[int, float] = {}
        self._t = 0.0
        self._machine = (0.0, 0.0)

    def start(self, now: float) -> None:
        self._t = now
        self._before = {p: s[0] for pids in self.groups.values() for p in pids
                        if (s := proc_stat(p)) is not None}
        self._machine = machine_busy()

    def stop(self, now: float) -> dict[str, float]:
        elapsed = max(1e-6, now - self._t)
        out: dict[str, float] = {}
        for name, pids in self.groups.items():
            total = 0.0
            for p in pids:
                s = proc_stat(p)
                if s is not None and p in self._before:
                    total += s[0] - self._before[p]
            out[name] = round(100 * total / elapsed, 1)
        busy, total = machine_busy()
        b0, t0 = self._machine
        out["machine"] = round(100 * os.cpu_count() * (busy - b0) / max(1e-6, total - t0), 1)  # type: ignore[operator]
        return out


def rss_mb(pids: list[int]) -> float:
    return sum(s[1] for p in pids if (s := proc_stat(p)) is not None) / 2**20


def shared_memory_mb(pids: list[int]) -> tuple[float, float]:
    """(PSS, private) of ``pids`` in MB, from /proc/PID/smaps_rollup. RSS counts the shared
    libraries (FFmpeg, OpenSSL, pjsua2, numpy) once per worker; PSS splits them between the
    processes that map them, so the sum over all processes is what they really take."""
    pss = private = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key == "Pss":
                pss += int(rest.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                private += int(rest.split()[0])
    return pss / 1024, private / 1024


# --- the bridge's /metrics ------------------------------------------------------------------
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+([-+0-9.eEinfNa]+)$')


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The bridge's Prometheus samples: {(name, ((label, value), ...)): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(item in ls for item in want))
