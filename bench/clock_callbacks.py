"""CPU of pjmedia's clock thread calling the worker's frame ports, with and without a kept
Python thread state for that thread (bridge/sip/threadstate.py).

Each run is a fresh process with pjsua2 on the null sound device (as in a worker) and
--ports of the worker's own frame ports (bridge/sip/audio.py: FramePort, FrameBuffers, the
worker's frame copy), connected in pairs through the conference bridge, so every 20 ms tick
makes one onFrameRequested and one onFrameReceived call per port, as a worker's calls do
(4 calls: 8 ports). Nothing else runs in the process: its CPU time over --seconds, less that
of a run with the same ports not connected (the clock ticks then too and gives each port one
empty frame per tick, with the thread state kept), is the clock thread's cost of the two
callbacks with audio. Runs alternate between the ways, --rounds times; it prints one JSON
object and a table with the medians: % of a core per port and CPU microseconds per callback.

    .venv/bin/python bench/clock_callbacks.py --ports 8 --seconds 5 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TICKS_PER_S = 50


def run_one(ports: int, seconds: float, keep: bool, connect: bool) -> None:
    """In a child process: print the process's CPU seconds over ``seconds``."""
    sys.path.insert(0, str(ROOT))
    from bridge.sip import audio, framecopy
    from tests.harness import bare_pjsua

    if not keep:  # the callbacks without the kept thread state: as before threadstate.py
        audio.keep_thread_state = lambda: None  # type: ignore[attr-defined]

    ep = bare_pjsua.init()
    ep.libStart()
    loop = asyncio.new_event_loop()
    pool = audio.AudioPool(ports, 8000, framecopy.select(), loop)
    pool.create_ports()
    for b in pool.buffers:
        b.tone = (b"\x01\x00" * 160,)  # every frame requested is a full one
    if connect:
        for a, b in zip(pool._ports[0::2], pool._ports[1::2], strict=True):
            a.startTransmit(b)
            b.startTransmit(a)
    time.sleep(1.0)  # the clock settles
    start = time.process_time()
    time.sleep(seconds)
    spent = time.process_time() - start
    print(json.dumps({"cpu_s": spent,
                      "received": sum(b.rx_frames for b in pool.buffers)}), flush=True)
    os._exit(0)  # the process ends here: pjsua2's teardown is not what is measured


def measure(ports: int, seconds: float, keep: bool, connect: bool) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--ports", str(ports), "--seconds", str(seconds)]
        + (["--keep"] if keep else []) + (["--connect"] if connect else []),
        capture_output=True, text=True, check=True, cwd=ROOT)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"idle": [], "churn": [], "kept": []}
    for _ in range(args.rounds):
        runs["idle"].append(measure(args.ports, args.seconds, True, False)["cpu_s"])
        for name, keep in (("churn", False), ("kept", True)):
            r = measure(args.ports, args.seconds, keep, True)
            if r["received"] < args.ports * TICKS_PER_S * args.seconds * 0.9:
                raise SystemExit(f"{name}: the ports received only {r['received']} frames")
            runs[name].append(r["cpu_s"])
    idle = statistics.median(runs["idle"])
    callbacks = args.ports * 2 * TICKS_PER_S * args.seconds
    result: dict[str, Any] = {"ports": args.ports, "seconds": args.seconds,
                              "rounds": args.rounds,
                              "idle_pct_core": round(idle / args.seconds * 100, 3)}
    for name in ("churn", "kept"):
        spent = statistics.median(runs[name]) - idle
        result[name] = {
            "pct_core_per_port": round(spent / args.seconds * 100 / args.ports, 3),
            "us_per_callback": round(spent / callbacks * 1e6, 2),
            "rounds_cpu_s": [round(x, 4) for x in runs[name]],
        }
    result["ratio"] = round(result["kept"]["us_per_callback"]
                            / result["churn"]["us_per_callback"], 3)
    return result


def table(r: dict[str, Any]) -> str:
    return "\n".join([
        f"{r['ports']} ports, 2 callbacks each per 20 ms tick (medians of {r['rounds']} runs)",
        "| clock thread's Python thread state | % core per port | µs per callback |",
        "|---|---|---|",
        f"| made and destroyed per callback | {r['churn']['pct_core_per_port']} | "
        f"{r['churn']['us_per_callback']} |",
        f"| kept (threadstate.py) | {r['kept']['pct_core_per_port']} | "
        f"{r['kept']['us_per_callback']} |",
        f"ratio {r['ratio']}; the process with no port connected: "
        f"{r['idle_pct_core']} % of a core",
    ])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ports", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--connect", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        run_one(a.ports, a.seconds, a.keep, a.connect)
    else:
        res = main(a)
        print(table(res), file=sys.stderr)
        print(json.dumps(res))
