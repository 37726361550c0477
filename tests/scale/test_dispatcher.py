"""Many workers behind one SIP address: the generated Kamailio dispatcher in front of a pool.

Three workers of four calls each on fixed loopback ports, Kamailio (config from
bridge.sip.dispatcher) on its own port, a sipp UAC playing the trunk PBX. Ten concurrent calls
(more than one worker holds) all get answered and spread over the three workers; after one
worker is killed with SIGKILL, new calls are still answered. Every process is ours and
stopped by its PID.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.sip import dispatcher
from bridge.sip.config import LinkConfig, ListenAddress, SipConfig
from bridge.sip.handles import CallHandle
from bridge.sip.pool import WorkerPool
from tests.peers.ports import LOOPBACK, free_port, free_rtp_port, sip_options
from tests.peers.procs import Process, ProcessError, wait_until

KAMAILIO = "/usr/sbin/kamailio"
SCENARIOS = Path(__file__).with_name("scenarios")

pytestmark = [pytest.mark.timeout(120)]  # kamailio and sipp: installed by `make test`


def pool_config(ports: tuple[int, ...]) -> SipConfig:
    base = 20000 + 2 * (os.getpid() % 8000)
    return SipConfig(
        listen=(ListenAddress("udp", LOOPBACK, ports[0]),),
        worker_ports=ports,
        public_address=LOOPBACK,
        rtp_ports=(base, base + 239),
        workers=len(ports),
        calls_per_worker=4,
        links=(LinkConfig(company="acme", mode="trunk", domain=LOOPBACK,
                          allowed_sources=(LOOPBACK,)),),
        heartbeat_interval_s=0.5,
        heartbeat_timeout_s=3.0,
    )


class Dispatcher:
    """Kamailio running the generated dispatcher config on 127.0.0.1:port."""

    def __init__(self, workdir: Path, sip: SipConfig) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.sockdir = Path(tempfile.mkdtemp(prefix="kds-"))
        self.plan = dispatcher.plan(sip, f"{LOOPBACK}:{self.port}")
        self.cfg, self.list = dispatcher.write(
            self.plan, workdir / "kamailio-dispatcher.cfg", ctl=f"unix:{self.sockdir}/ctl",
            ping_interval_s=1, fr_timer_ms=1500, ping_failures=2,
            debug=int(os.environ.get("KAMAILIO_DEBUG", "2")))
        rundir = workdir / "run"
        rundir.mkdir(parents=True, exist_ok=True)
        check = subprocess.run([KAMAILIO, "-c", "-f", str(self.cfg), "-Y", str(rundir)],
                               capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise ProcessError(f"kamailio -c failed:\n{check.stdout}{check.stderr}")
        self.proc = Process("kamailio-dispatcher", [
            KAMAILIO, "-DD", "-E", "-f", str(self.cfg), "-Y", str(rundir),
            "-m", "32", "-M", "4", "-a", "no"], workdir)

    def start(self) -> Dispatcher:
        self.proc.start()

        def ready() -> bool:
            if not self.proc.alive():
                raise ProcessError(f"kamailio exited:\n{self.proc.log_tail()}")
            return (sip_options(self.port, timeout=0.3) or "").startswith("SIP/2.0 200")

        wait_until(ready, 15, what="the dispatcher")
        return self

    def rpc(self, *args: str) -> str:
        r = subprocess.run(["/usr/sbin/kamcmd", "-s", f"unix:{self.sockdir}/ctl", *args],
                           capture_output=True, text=True, timeout=10, check=False)
        return r.stdout + r.stderr

    def close(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.sockdir, ignore_errors=True)


class Caller:
    """sipp as the trunk PBX: ``calls`` calls to the dispatcher, all at once."""

    def __init__(self, workdir: Path, remote_port: int, calls: int, hold_ms: int,
                 name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        scenario = workdir / f"{name}.xml"
        scenario.write_text((SCENARIOS / "uac_hold.xml").read_text()
                            .replace("@@HOLD_MS@@", str(hold_ms)))
        self.port = free_port()
        self.proc = Process(name, [
            "sipp", "-sf", str(scenario), "-i", LOOPBACK, "-p", str(self.port),
            "-mi", LOOPBACK, "-mp", str(free_rtp_port()),
            "-m", str(calls), "-l", str(calls), "-r", str(max(calls, 10)),
            "-timeout", "45s", "-timeout_error", "-trace_err", "-trace_stat", "-nostdin",
            "-s", "alice=example.org", f"{LOOPBACK}:{remote_port}"], workdir)

    def start(self) -> Caller:
        self.proc.start()
        return self

    async def done(self, timeout_s: float) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout_s)

    def explain(self) -> str:
        errs = "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in self.proc.workdir.glob(f"{self.proc.name}_*_errors.log"))
        return f"sipp rc={self.proc.returncode}\n{self.proc.log_tail(30)}\n--- errors\n{errs}"

    def stop(self) -> None:
        self.proc.stop(grace=2.0)


def occupy_udp(port: int, timeout_s: float = 5.0) -> socket.socket:
    """Bind 127.0.0.1:port as soon as it is free (blocking: nobody else gets it first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((LOOPBACK, port))
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


async def eventually(pred: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
def ports() -> tuple[int, ...]:
    return tuple(free_port() for _ in range(3))


@pytest.fixture
def front(tmp_path: Path, ports: tuple[int, ...]) -> Iterator[Dispatcher]:
    d = Dispatcher(tmp_path / "kamailio", pool_config(ports))
    try:
        yield d.start()
    finally:
        d.close()


def test_generated_config_lists_every_worker(tmp_path: Path, ports: tuple[int, ...]) -> None:
    sip = pool_config(ports)
    p = dispatcher.plan(sip, "127.0.0.1:5060")
    assert [w.uri for w in p.workers] == [f"sip:127.0.0.1:{port}" for port in ports]
    # the same rule as the pool's: worker i's address from SipConfig.for_worker
    assert [w.port for w in p.workers] == [sip.for_worker(i).listen[0].port for i in range(3)]
    cfg, lst = dispatcher.render(p, tmp_path / "x.list")
    assert "@@" not in cfg.replace("@@@", "")
    assert lst.count("\n1 sip:") == 3
    assert 'is_in_subnet("$si", "127.0.0.1/32")' in cfg
    with pytest.raises(dispatcher.DispatcherConfigError, match="worker 0's SIP port"):
        dispatcher.plan(sip, f"127.0.0.1:{ports[0]}")
    other = LinkConfig(company="beta", mode="trunk", domain="b", allowed_sources=("10.0.0.0/8",))
    two = SipConfig(listen=sip.listen, worker_ports=ports, workers=3, rtp_ports=sip.rtp_ports,
                    links=(*sip.links, other))
    with pytest.raises(dispatcher.DispatcherConfigError, match=r"must include 127\.0\.1\.1"):
        dispatcher.plan(two, "127.0.0.1:5060")


async def test_ten_calls_through_dispatcher_spread_over_three_workers(
    tmp_path: Path, ports: tuple[int, ...], front: Dispatcher
) -> None:
    per_worker: collections.Counter[int] = collections.Counter()
    answered: list[CallHandle] = []
    peak = 0

    async def on_call(handle: CallHandle) -> None:
        nonlocal peak
        per_worker[handle.worker] += 1
        await handle.answer()
        answered.append(handle)
        peak = max(peak, sum(1 for h in pool.calls() if not h.ended))

    pool = WorkerPool(pool_config(ports))
    pool.on_incoming_call = on_call
    await pool.start()
    try:
        # ---- 10 concurrent calls, more than one worker's 4
        t0 = time.monotonic()
        caller = Caller(tmp_path / "sipp", front.port, calls=10, hold_ms=4000,
                        name="sipp-10").start()
        rc = await caller.done(40)
        elapsed = time.monotonic() - t0
        assert rc == 0, caller.explain() + "\n--- kamailio\n" + front.proc.log_tail(40)
        assert len(answered) == 10, dict(per_worker)
        assert sorted(per_worker) == [0, 1, 2], dict(per_worker)
        assert max(per_worker.values()) <= 4, dict(per_worker)
        assert peak > 4, peak
        print(f"\n10 calls answered in {elapsed:.1f} s, per worker {dict(per_worker)}, "
              f"peak {peak} concurrent")

        # ---- kill -9 worker 1 and keep its port silent (a black hole: the pool's replacement
        # cannot bind it), so the dispatcher must fail over on timeout and stop using it
        victim = pool.workers()[1]
        os.kill(victim.pid, signal.SIGKILL)
        hole = occupy_udp(ports[1])
        try:
            per_worker.clear()
            answered.clear()
            t0 = time.monotonic()
            caller = Caller(tmp_path / "sipp", front.port, calls=6, hold_ms=2000,
                            name="sipp-after-kill").start()
            rc = await caller.done(40)
            elapsed = time.monotonic() - t0
            log = front.proc.log_text()
            assert rc == 0, caller.explain() + "\n--- kamailio\n" + front.proc.log_tail(60)
            assert len(answered) == 6, dict(per_worker)
            assert set(per_worker) <= {0, 2}, dict(per_worker)
            assert "did not answer: marked inactive" in log, front.proc.log_tail(60)
            failovers = log.count("trying the next worker")
            assert failovers >= 1
            state = front.rpc("dispatcher.list")
            print(f"after SIGKILL of worker 1 (pid {victim.pid}), its port silent: 6 calls "
                  f"answered in {elapsed:.1f} s, per worker {dict(per_worker)}, "
                  f"{failovers} failover(s)")
            flags = dict(re.findall(r"URI: sip:127\.0\.0\.1:(\d+)\s+FLAGS: (\w+)", state))
            assert flags[str(ports[1])].startswith("I"), state  # inactive (probing)

            # ---- the port comes back (the pool restarts worker 1): pings make it active
            hole.close()
            await eventually(lambda: any(w.index == 1 and w.alive and w.pid != victim.pid
                                         for w in pool.workers()), 30, "worker 1 restarted")

            def active() -> bool:
                state = front.rpc("dispatcher.list")
                found = dict(re.findall(r"URI: sip:127\.0\.0\.1:(\d+)\s+FLAGS: (\w+)", state))
                return found.get(str(ports[1]), "").startswith("A")

            await eventually(active, 10, "worker 1 active again in the dispatcher")
            per_worker.clear()
            caller = Caller(tmp_path / "sipp", front.port, calls=9, hold_ms=1500,
                            name="sipp-after-restart").start()
            assert await caller.done(40) == 0, caller.explain()
            assert sorted(per_worker) == [0, 1, 2], dict(per_worker)
            print(f"worker 1 restarted and active again: 9 calls, per worker {dict(per_worker)}")
        finally:
            hole.close()
    finally:
        await pool.stop()


def test_cli_writes_a_config_kamailio_accepts(tmp_path: Path) -> None:
    """``python -m bridge.sip.dispatcher`` on the example config, made a 3-worker trunk site."""
    from ruamel.yaml import YAML

    raw = YAML(typ="safe").load(Path("config.example.yaml").read_text())
    raw["sip"]["listen"] = {"udp": "127.0.0.1:5070", "tcp": "127.0.0.1:5070"}
    raw["sip"]["workers"] = 3
    pbx = raw["companies"]["acme"]["pbx"]
    pbx.update(mode="trunk", allowed_sources=["203.0.113.5", "127.0.0.1"])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps(raw))  # JSON is YAML
    out = tmp_path / "kamailio-dispatcher.cfg"
    rc = dispatcher.main(["-c", str(cfg), "-o", str(out), "--listen", "127.0.0.1:5060",
                          "--ctl", ""])
    assert rc == 0
    text = out.read_text()
    assert "listen=udp:127.0.0.1:5060" in text and "ctl.so" not in text
    assert out.with_suffix(".list").read_text().splitlines()[1:] == [
        f"1 sip:127.0.0.1:{5070 + i} 0 0 duid=worker{i}" for i in range(3)]
    assert 'is_in_subnet("$si", "203.0.113.5/32")' in text
    rundir = tmp_path / "run"
    rundir.mkdir()
    check = subprocess.run([KAMAILIO, "-c", "-f", str(out), "-Y", str(rundir)],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # the bridge's own port for Kamailio: refused
    assert dispatcher.main(["-c", str(cfg), "-o", str(out), "--listen", "127.0.0.1:5071"]) == 2
