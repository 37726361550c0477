"""N concurrent bridged calls held for S seconds: how many connect, how much audio survives
each way, how much delay and jitter the bridge adds, what it costs; and the same N calls on
pure aiortc without the bridge as the baseline, in the same run.

Each call: a Matrix-side WebRTC caller (bench/_callers.py: Element's m.call.* signalling
through Synapse by the test client, aiortc ICE and DTLS-SRTP, PCMU) → the bridge (its
controller and ceil(N/4) workers) → a sipp UAS as trunkco's PBX whose SDP points at
bench/_pbx.py, which plays and records the PBX side's audio. All on 127.0.0.1.

**Measuring** (details in bench/_media.py). Both sides play their own signal for S seconds:
a 1 kHz tone with a 100 ms burst 20 dB louder every second, on a 20 ms grid of the machine's
monotonic clock, so the send time of every burst onset is known to the sample.

- frame_loss_pct.end_to_end: tone frames that did not arrive at the far end (the PBX side for
  to_sip, the caller for to_matrix) out of the S*50 each stream sent; frame_loss_pct.bridge:
  the bridge's own counters (bridge_audio_frames_total / _lost_total from /metrics, whole
  calls, counted when each call's media closes).
- one_way_ms: burst onset at the receiver minus its send time, through the whole chain
  (caller, Synapse-free media path, the bridge, the PBX side's receiver): an upper bound of
  what the bridge adds. added_latency_ms: the same bursts minus the baseline's median one-way
  delay of that direction, i.e. what the bridge adds beyond a pure aiortc endpoint talking to
  the same caller. The baseline's aiortc receiver holds 4 frames in its jitter buffer before
  it decodes (about 80 ms); the bridge moves G.711 without it (bridge/media/g711_rtp.py), so
  to_sip comes out negative: the bridge's caller → SRTP → pump → pjmedia → PBX path is
  shorter than aiortc's own receive path. to_matrix compares the bridge's pjmedia jitter
  buffer, conference clock and pump against the baseline's aiortc sender task.
- calls_refused_overload: calls the bridge refused because the machine's CPU was nearly
  full (sip.min_idle_cpu, --min-idle-cpu; bridge/sip/admission.py). The callers share the
  cores with the bridge here, so this shows where the whole machine is full.
- jitter_ms: RFC 3550 interarrival jitter at the receivers, median over the calls.
- setup_overhead_ms: the bridge's own per-call measurement (its log line: m.call.invite →
  SIP INVITE plus SIP 200 → m.call.answer), median and p95 over the calls.
- cpu_pct: % of one core over the S seconds for the controller, the workers, their total,
  the bench's callers (bench_clients: visible when they saturate), the PBX side, Synapse and
  the whole machine (of 200 % on two cores). rss_mb_per_call: the bridge's RSS (controller +
  workers) / N; rss_mb also gives the per-worker and per-call growth. pss_mb_per_call: the
  same with PSS, which counts the shared libraries every worker maps once in all
  (rss_mb.pss_total, and rss_mb.private_total: the pages no other process shares).
- baseline: the same callers against bench/_baseline.py: the bridge's aiortc leg
  (bridge.media.webrtc) with aiortc's own RTP sender and receiver, in ceil(N/4) processes,
  each with a 20 ms clock: no Matrix, no pjsua2, no SIP.

    .venv/bin/python bench/calls.py --calls 10 --seconds 10
    .venv/bin/python bench/calls.py --ramp 1,5,10,20,40,80,120 --seconds 20 --out-dir bench/results
    .venv/bin/python bench/calls.py --calls 20 --seconds 20 --profile-dir bench/results/profile

The ramp goes on past its list in steps of --ramp-step until end-to-end frame loss passes 1 %
in either direction or a call fails, then tries once halfway between the last step that held
and that one, and writes latest.json, latest.md and latest.png to --out-dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._baseline import baseline_main  # noqa: E402
from bench._callers import caller_main  # noqa: E402
from bench._media import FRAME_S, LEAD, delays_ms, summary  # noqa: E402
from bench._pbx import pbx_main  # noqa: E402
from bench._profile import summarize  # noqa: E402
from bench._stack import (  # noqa: E402
    HS,
    CpuSampler,
    UasMedia,
    bench_tmpdir,
    children,
    descendants,
    make_stack,
    metric,
    proc_stat,
    rss_mb,
    scrape,
    shared_memory_mb,
    start_stack,
    thread_stats,
)
from tests.peers.ports import free_port, free_rtp_port  # noqa: E402

CTX = mp.get_context("spawn")
SETUP_LINE = re.compile(
    r"setup overhead: m\.call\.invite→INVITE ([0-9.]+) ms, 200→m\.call\.answer ([0-9.]+) ms")
PASSWORD = "benchpw"
OVERLOAD_LINE = re.compile(r"the bridge is overloaded: ([^;]*);")


class Child:
    """A benchmark process (spawned) and its end of the command pipe."""

    def __init__(self, name: str, target: Any, *args: Any) -> None:
        self.name = name
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def ask(self, msg: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        if msg is not None:
            self.conn.send(msg)
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.name}: no reply within {timeout:.0f} s")
        return self.conn.recv()  # type: ignore[no-any-return]

    def stop(self, msg: dict[str, Any] | None = None) -> None:
        if msg is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(msg)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def ask_all(children_: list[Child], msgs: list[dict[str, Any] | None], timeout: float,
            ) -> list[dict[str, Any]]:
    for c, m in zip(children_, msgs, strict=True):
        if m is not None:
            c.conn.send(m)
    deadline = time.monotonic() + timeout
    return [c.ask(None, max(0.1, deadline - time.monotonic())) for c in children_]


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def pct(part: float, whole: float) -> float | None:
    return None if whole <= 0 else round(100 * part / whole, 2)


def caller_groups(n: int, per_proc: int) -> list[list[int]]:
    procs = max(1, math.ceil(n / per_proc))
    return [list(range(i, n, procs)) for i in range(procs)]


class Profiler:
    """py-spy (raw collapsed stacks, native frames, thread ids) over some of the bridge's
    processes during the window, plus every thread's CPU from /proc."""

    def __init__(self, out: Path, pids: dict[str, int], seconds: float, rate: int = 25) -> None:
        self.out = out
        self.rate = rate
        self.pids = pids
        self.seconds = seconds
        self.procs: list[subprocess.Popen[bytes]] = []
        self.threads_before: dict[str, dict[int, tuple[str, float]]] = {}
        self.t = 0.0

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.t = time.monotonic()
        for name, pid in self.pids.items():
            self.threads_before[name] = thread_stats(pid)
            self.procs.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(round(self.seconds)),
                 "--rate", str(self.rate), "--threads", "--native", "--format", "raw",
                 "--output", str(self.out / f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.t
        # py-spy's own cost (it pauses and unwinds the processes it samples)
        spy = sum(s[0] for p in self.procs if (s := proc_stat(p.pid)) is not None)
        threads: dict[str, Any] = {"py-spy_cpu_pct": round(100 * spy / elapsed, 1)}
        for name, pid in self.pids.items():
            after = thread_stats(pid)
            before = self.threads_before.get(name, {})
            threads[name] = sorted(
                ({"tid": tid, "name": nm,
                  "cpu_pct": round(100 * (cpu - before.get(tid, (nm, 0.0))[1]) / elapsed, 1)}
                 for tid, (nm, cpu) in after.items()),
                key=lambda x: -x["cpu_pct"])
        for p in self.procs:
            try:
                p.wait(self.seconds + 30)
            except subprocess.TimeoutExpired:
                p.kill()
        (self.out / "threads.json").write_text(json.dumps(threads, indent=1))
        (self.out / "summary.md").write_text(summarize(self.out))
        return threads


# --- one step through the bridge -------------------------------------------------------------
def bridged(n: int, seconds: float, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    workers = max(1, math.ceil(n / 4))
    stack = make_stack(root, workers=workers, log_levels={"bridge.calls.manager": "INFO"},
                       bridge_overrides={"sip": {"min_idle_cpu": args.min_idle_cpu}})
    t_ref = math.floor(time.monotonic()) + 1.0
    pbx_port = free_rtp_port()
    kids: list[Child] = []
    sipp = UasMedia(root, "uas_answer_media", local_port=stack.trunk_port, calls=n,
                    template={"MEDIA_PORT": str(pbx_port)}, timeout_s=3600)
    result: dict[str, Any] = {"calls_requested": n, "seconds": seconds, "workers": workers}
    try:
        pbx = Child("pbx", pbx_main, pbx_port, t_ref)
        kids.append(pbx)
        pbx.ask(None, 30)
        start_stack(stack)
        sipp.start()
        for i in range(n):
            stack.synapse.register_user(f"bench{i}", PASSWORD)
        ghost = f"@sip_trunkco_201:{HS}"
        groups = caller_groups(n, args.calls_per_proc)
        callers = [Child(f"callers{k}", caller_main, {
            "mode": "matrix", "t_ref": t_ref, "hs_url": stack.synapse.url,
            "calls": [{"index": i, "phase_ms": (i * 7) % 20, "user": f"@bench{i}:{HS}",
                       "password": PASSWORD, "ghost": ghost} for i in g]})
            for k, g in enumerate(groups)]
        kids += callers
        ready = ask_all(callers, [None] * len(callers), 120 + 2 * n)
        errors = [e for r in ready for e in r["errors"]]
        ctrl = stack.bridge.proc.pid if stack.bridge.proc else 0
        worker_pids = descendants(ctrl)  # the fork server and the workers
        # the bridge idle, every worker started: its base cost
        idle = CpuSampler({"controller": [ctrl], "workers": worker_pids})
        idle.start(time.monotonic())
        time.sleep(3.0)
        idle_cpu = idle.stop(time.monotonic())
        rss_idle = {"controller": rss_mb([ctrl]), "workers": rss_mb(worker_pids)}

        t_call = time.monotonic() + 1.0
        at = {i: t_call + i / args.setup_rate for i in range(n)}
        replies = ask_all(callers, [{"cmd": "call", "at": [at[i] for i in g]} for g in groups],
                          n / args.setup_rate + 180)
        calls = [c for r in replies for c in r["calls"]]
        established = sum(1 for c in calls if c["ok"])
        errors += [c["error"] for c in calls if c["error"]]
        result["calls_established"] = established
        result["calls_refused_overload"] = int(metric(
            scrape(stack.metrics_port), "bridge_calls_refused_overload_total",
            direction="outbound"))
        if errors:
            result["errors"] = sorted(set(errors))[:5]

        t0 = t_ref + math.ceil(time.monotonic() - t_ref + 2.0)
        pbx.ask({"cmd": "measure", "t0": t0, "seconds": seconds}, 30)
        for c in callers:
            c.conn.send({"cmd": "measure", "t0": t0, "seconds": seconds})
        worker_pids = descendants(ctrl)
        groups_cpu = {"controller": [ctrl], "workers": worker_pids,
                      "bench_clients": [c.pid for c in callers],
                      "pbx": [pbx.pid, sipp.proc.pid] if sipp.proc.pid else [pbx.pid],
                      "synapse": [stack.synapse.proc.pid] if stack.synapse.proc else []}
        sampler = CpuSampler(groups_cpu)
        profiler = None
        if args.profile_dir:
            # py-spy pauses and unwinds what it samples (~9 % of a core each here): the
            # controller and a few workers only
            forked = [p for p in worker_pids if p not in children(ctrl)]
            names = {"controller": ctrl, **{f"worker{k}": p for k, p in
                                            enumerate(forked[:args.profile_workers])}}
            profiler = Profiler(Path(args.profile_dir), names, seconds)
        sleep_until(t0)
        sampler.start(time.monotonic())
        if profiler is not None:
            profiler.start()
        sleep_until(t0 + seconds / 2)
        rss_busy = {"controller": rss_mb([ctrl]), "workers": rss_mb(worker_pids)}
        pss, private = shared_memory_mb([ctrl, *worker_pids])
        sleep_until(t0 + seconds)
        cpu = sampler.stop(time.monotonic())
        if profiler is not None:
            profiler.stop()
            result["profile"] = str(profiler.out)
        measured = ask_all(callers, [None] * len(callers), LEAD + 30)
        pbx_report = pbx.ask({"cmd": "report"}, 30)
        ask_all(callers, [{"cmd": "hangup"}] * len(callers), 60 + n)

        frames = _bridge_frames(stack.metrics_port)
        log = stack.bridge.log_text()
    finally:
        for k in kids:
            k.stop({"cmd": "stop"})
        with contextlib.suppress(Exception):
            sipp.stop()
        stack.stop()

    expected = seconds / FRAME_S
    client_meters = [m for r in measured for m in r["meters"].values()]
    pbx_meters = list(pbx_report["streams"].values())
    rx_to_sip = sum(m["tone_frames"] for m in pbx_meters)
    rx_to_matrix = sum(m["tone_frames"] for m in client_meters)
    result["frame_loss_pct"] = {
        "bridge": frames,
        "end_to_end": {"to_sip": pct(expected * established - rx_to_sip, expected * established),
                       "to_matrix": pct(expected * established - rx_to_matrix,
                                        expected * established)},
    }
    result["one_way_ms_all"] = {
        "to_sip": [d for m in pbx_meters for d in delays_ms(m["onsets"], t0, seconds)],
        "to_matrix": [d for m in client_meters for d in delays_ms(m["onsets"], t0 + LEAD, seconds)],
    }
    result["jitter_ms"] = {
        "to_sip": _median([m["jitter_ms"] for m in pbx_meters]),
        "to_matrix": _median([m["jitter_ms"] for m in client_meters]),
    }
    pairs = [(float(a), float(b)) for a, b in SETUP_LINE.findall(log)]
    refusals = OVERLOAD_LINE.findall(log)
    if refusals:
        result["overload_refusals"] = {"first": refusals[0], "last": refusals[-1]}
    result["setup_overhead_ms"] = {
        **summary(a + b for a, b in pairs),
        "invite_to_sip_invite": summary(a for a, _ in pairs),
        "sip_200_to_matrix_answer": summary(b for _, b in pairs),
        "calls_measured": len(pairs),
        "client_invite_to_connected": summary(c["setup_ms"] for c in calls if c["ok"]),
        "client_event_put": _worst([r["put_ms"] for r in replies]),
    }
    bridge_cpu = cpu["controller"] + cpu["workers"]
    result["cpu_pct"] = {
        "controller": cpu["controller"], "workers": cpu["workers"],
        "total": round(bridge_cpu, 1),
        "per_call": round(bridge_cpu / max(1, established), 2),
        "bench_clients": cpu["bench_clients"], "pbx_side": cpu["pbx"],
        "synapse": cpu["synapse"], "machine": cpu["machine"],
        "others": round(cpu["machine"] - bridge_cpu - cpu["bench_clients"] - cpu["pbx"]
                        - cpu["synapse"], 1),
        "idle_controller": idle_cpu["controller"],
        "idle_per_worker": round(idle_cpu["workers"] / workers, 2),
    }
    rss_total = rss_busy["controller"] + rss_busy["workers"]
    result["rss_mb_per_call"] = round(rss_total / max(1, established), 1)
    result["rss_mb"] = {
        "total": round(rss_total, 1), "controller": round(rss_busy["controller"], 1),
        "per_worker": round(rss_busy["workers"] / workers, 1),
        "per_worker_idle": round(rss_idle["workers"] / workers, 1),
        "growth_per_call": round((rss_total - rss_idle["controller"] - rss_idle["workers"])
                                 / max(1, established), 2),
        "pss_total": round(pss, 1), "private_total": round(private, 1),
    }
    result["pss_mb_per_call"] = round(pss / max(1, established), 1)
    result["bench_client"] = {
        "procs": len(callers),
        "send_late_ms": _worst([r["send_late_ms"] for r in measured]),
        "tone_frames_sent": sum(m["sent_tone"] for m in client_meters),
    }
    return result


def _bridge_frames(port: int) -> dict[str, Any]:
    """The bridge's frame counters once every call's media has closed (they stop moving)."""
    last: tuple[float, ...] | None = None
    samples: dict[Any, float] = {}
    for _ in range(30):
        time.sleep(0.5)
        try:
            samples = scrape(port)
        except OSError:
            continue
        now = tuple(metric(samples, name, direction=d)
                    for name in ("bridge_audio_frames_total", "bridge_audio_frames_lost_total")
                    for d in ("to_sip", "to_matrix"))
        if now == last and now[0] > 0:
            break
        last = now
    out: dict[str, Any] = {}
    for d in ("to_sip", "to_matrix"):
        ok = metric(samples, "bridge_audio_frames_total", direction=d)
        lost = metric(samples, "bridge_audio_frames_lost_total", direction=d)
        out[d] = pct(lost, ok + lost)
        out[f"{d}_frames"] = int(ok)
        out[f"{d}_lost"] = int(lost)
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _worst(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    meds = [s["median"] for s in summaries if s.get("median") is not None]
    p95s = [s["p95"] for s in summaries if s.get("p95") is not None]
    return {"median": max(meds) if meds else None, "p95": max(p95s) if p95s else None}


# --- the same calls on pure aiortc ------------------------------------------------------------
def baseline(n: int, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    t_ref = math.floor(time.monotonic()) + 1.0
    peers: list[Child] = []
    callers: list[Child] = []
    try:
        ports = []
        for k in range(max(1, math.ceil(n / 4))):
            port = free_port()
            ports.append(port)
            peers.append(Child(f"peer{k}", baseline_main,
                               {"t_ref": t_ref, "phase_ms": (k * 7 + 3) % 20, "port": port}))
        ask_all(peers, [None] * len(peers), 60)
        groups = caller_groups(n, args.calls_per_proc)
        callers = [Child(f"direct{k}", caller_main, {
            "mode": "direct", "t_ref": t_ref,
            "calls": [{"index": i, "phase_ms": (i * 7) % 20, "peer": ("127.0.0.1", ports[i // 4])}
                      for i in g]}) for k, g in enumerate(groups)]
        ask_all(callers, [None] * len(callers), 60)
        t_call = time.monotonic() + 0.5
        replies = ask_all(callers, [{"cmd": "call", "at": [t_call + i / args.setup_rate for i in g]}
                                    for g in groups], n / args.setup_rate + 120)
        calls = [c for r in replies for c in r["calls"]]
        established = sum(1 for c in calls if c["ok"])
        t0 = t_ref + math.ceil(time.monotonic() - t_ref + 2.0)
        ask_all(peers, [{"cmd": "measure", "t0": t0, "seconds": seconds}] * len(peers), 30)
        for c in callers:
            c.conn.send({"cmd": "measure", "t0": t0, "seconds": seconds})
        sampler = CpuSampler({"peers": [p.pid for p in peers],
                              "bench_clients": [c.pid for c in callers]})
        sleep_until(t0)
        sampler.start(time.monotonic())
        sleep_until(t0 + seconds / 2)
        rss = rss_mb([p.pid for p in peers])
        sleep_until(t0 + seconds)
        cpu = sampler.stop(time.monotonic())
        measured = ask_all(callers, [None] * len(callers), LEAD + 30)
        reports = ask_all(peers, [{"cmd": "report"}] * len(peers), 30)
        ask_all(callers, [{"cmd": "hangup"}] * len(callers), 60 + n)
    finally:
        for c in callers:
            c.stop()
        for p in peers:
            p.stop({"cmd": "stop"})
    expected = seconds / FRAME_S
    client_meters = [m for r in measured for m in r["meters"].values()]
    peer_meters = [m for r in reports for m in r["legs"]]
    to_peer = [d for m in peer_meters for d in delays_ms(m["onsets"], t0, seconds)]
    from_peer = [d for m in client_meters for d in delays_ms(m["onsets"], t0 + LEAD, seconds)]
    return {
        "calls_established": established,
        "frame_loss_pct": {
            "to_peer": pct(expected * established - sum(m["tone_frames"] for m in peer_meters),
                           expected * established),
            "from_peer": pct(expected * established - sum(m["tone_frames"] for m in client_meters),
                             expected * established)},
        "one_way_ms": {"to_peer": summary(to_peer), "from_peer": summary(from_peer)},
        "jitter_ms": {"to_peer": _median([m["jitter_ms"] for m in peer_meters]),
                      "from_peer": _median([m["jitter_ms"] for m in client_meters])},
        "cpu_pct": {"peers": cpu["peers"], "per_call": round(cpu["peers"] / max(1, established), 2),
                    "bench_clients": cpu["bench_clients"], "machine": cpu["machine"],
                    "others": round(cpu["machine"] - cpu["peers"] - cpu["bench_clients"], 1)},
        "rss_mb_per_call": round(rss / max(1, established), 1),
        "processes": len(peers),
        "_to_peer_median": statistics.median(to_peer) if to_peer else None,
        "_from_peer_median": statistics.median(from_peer) if from_peer else None,
    }


def step(n: int, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    with bench_tmpdir("bench-calls-") as d:
        r = bridged(n, seconds, args, Path(d))
    one_way = r.pop("one_way_ms_all")
    r["one_way_ms"] = {k: summary(v) for k, v in one_way.items()}
    if args.baseline:
        b = baseline(n, seconds, args)
        base = {"to_sip": b.pop("_to_peer_median"), "to_matrix": b.pop("_from_peer_median")}
        r["added_latency_ms"] = {
            k: summary(x - base[k] for x in v) if base[k] is not None else summary([])
            for k, v in one_way.items()}
        r["baseline"] = b
    return r


def passed(r: dict[str, Any], limit: float) -> bool:
    """The ramp's stop rule: every call up, end-to-end loss at most ``limit`` % both ways.
    (The bridge's own counters cover whole calls, start and hangup included, and are shown
    beside it.)"""
    if r["calls_established"] < r["calls_requested"]:
        return False
    return all(v is not None and v <= limit for v in r["frame_loss_pct"]["end_to_end"].values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--ramp", default="", help="comma-separated N values, then on in --ramp-step "
                    "until loss passes --max-loss or a call fails")
    ap.add_argument("--ramp-step", type=int, default=40)
    ap.add_argument("--ramp-max", type=int, default=400)
    ap.add_argument("--max-loss", type=float, default=1.0, help="stop rule, %% frames lost")
    ap.add_argument("--no-refine", dest="refine", action="store_false",
                    help="after the step that fails, do not try once halfway back")
    ap.add_argument("--setup-rate", type=float, default=10.0, help="calls placed per second")
    ap.add_argument("--calls-per-proc", type=int, default=12,
                    help="bench callers per process (one asyncio loop each)")
    ap.add_argument("--min-idle-cpu", type=int, default=5, help="the bridge's "
                    "sip.min_idle_cpu (5, its default: refuse calls the CPU cannot carry; "
                    "0: let every call in, to see where audio breaks)")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false")
    ap.add_argument("--out-dir", default="", help="write latest.json, latest.md, latest.png here")
    ap.add_argument("--profile-dir", default="", help="py-spy the controller and workers "
                    "during the measurement (bench/_profile.py sums it up)")
    ap.add_argument("--profile-workers", type=int, default=2, help="how many workers to py-spy")
    args = ap.parse_args()
    if args.ramp:
        steps = [int(x) for x in args.ramp.split(",") if x]
    else:
        steps = [args.calls]
    results: list[dict[str, Any]] = []
    i = 0
    while i < len(steps):
        n = steps[i]
        r = step(n, args.seconds, args)
        results.append(r)
        print(json.dumps(r), flush=True)
        if not passed(r, args.max_loss):
            ok = [x["calls_requested"] for x in results if passed(x, args.max_loss)]
            mid = 4 * round((max(ok) + n) / 8) if ok and args.ramp else 0
            if args.refine and ok and max(ok) < mid < n:
                r = step(mid, args.seconds, args)  # between the last pass and this failure
                results.append(r)
                print(json.dumps(r), flush=True)
            break
        if args.ramp and i == len(steps) - 1 and n + args.ramp_step <= args.ramp_max:
            steps.append(n + args.ramp_step)
        i += 1
    results.sort(key=lambda x: x["calls_requested"])
    if args.out_dir:
        from bench._report import write_all

        write_all(Path(args.out_dir), results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
