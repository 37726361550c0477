"""The call ramp's results as files: latest.json, latest.md (tables) and latest.png (CPU and
frame loss against N)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _refused(r: dict[str, Any]) -> str:
    """" (n refused)" when admission control turned calls away at that step."""
    n = r.get("calls_refused_overload")
    return f" ({n} refused)" if n else ""


def _mp(d: dict[str, Any] | None) -> str:
    """median/p95"""
    if not d:
        return "-"
    return f"{_f(d.get('median'))} / {_f(d.get('p95'))}"


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Concurrent bridged calls (bench/calls.py)",
        "",
        f"{meta['date']} · {meta['machine']} · {meta['seconds']:.0f} s per step · "
        f"PCMU both legs, 8 kHz clock · command: `{meta['command']}`",
        "",
        "## Through the bridge",
        "",
        "Loss: end to end / the bridge's own counters, %. Latency and jitter in ms "
        "(median / p95); one-way is through the whole chain, and in brackets the median added "
        "beyond the pure-aiortc baseline of the same direction (negative: shorter than aiortc's "
        "own path, whose receiver holds about 80 ms). CPU in % of one core (the machine has "
        f"{meta['cores']} cores: {100 * meta['cores']} %).",
        "",
        "| N | up | loss to SIP | loss to Matrix | one-way to SIP (added) | one-way to "
        "Matrix (added) | jitter to SIP / Matrix | setup overhead | CPU ctrl | CPU workers | CPU total "
        "| CPU / call | bench clients | machine | RSS MB / call | PSS MB / call |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        loss = r["frame_loss_pct"]
        e2e, br = loss["end_to_end"], loss["bridge"]
        lat = r.get("added_latency_ms", {})
        ow = r.get("one_way_ms", {})
        cpu = r["cpu_pct"]
        lines.append(
            f"| {r['calls_requested']} | {r['calls_established']}{_refused(r)} "
            f"| {_f(e2e['to_sip'], 2)} / {_f(br['to_sip'], 2)} "
            f"| {_f(e2e['to_matrix'], 2)} / {_f(br['to_matrix'], 2)} "
            f"| {_mp(ow.get('to_sip'))} ({_f(lat.get('to_sip', {}).get('median'))}) "
            f"| {_mp(ow.get('to_matrix'))} ({_f(lat.get('to_matrix', {}).get('median'))}) "
            f"| {_f(r['jitter_ms']['to_sip'])} / {_f(r['jitter_ms']['to_matrix'])} "
            f"| {_mp(r['setup_overhead_ms'])} "
            f"| {_f(cpu['controller'])} | {_f(cpu['workers'])} | {_f(cpu['total'])} "
            f"| {_f(cpu['per_call'])} | {_f(cpu['bench_clients'])} | {_f(cpu['machine'])} "
            f"| {_f(r['rss_mb_per_call'])} | {_f(r.get('pss_mb_per_call'))} |")
    lines += [
        "",
        "## Baseline: the same callers on pure aiortc (no Matrix, no pjsua2, no SIP)",
        "",
        "The bridge's WebRTC leg (bridge.media.webrtc) with aiortc's own RTP sender and receiver "
        "(direct_g711=False) answering each caller, 4 legs per process, a 20 ms clock per process writing and a task per leg reading frames.",
        "",
        "| N | up | loss to peer / from peer | one-way to peer | one-way from peer "
        "| CPU peers | CPU / call | bench clients | RSS MB / call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = r.get("baseline")
        if not b:
            continue
        lines.append(
            f"| {r['calls_requested']} | {b['calls_established']} "
            f"| {_f(b['frame_loss_pct']['to_peer'], 2)} / {_f(b['frame_loss_pct']['from_peer'], 2)} "
            f"| {_mp(b['one_way_ms']['to_peer'])} | {_mp(b['one_way_ms']['from_peer'])} "
            f"| {_f(b['cpu_pct']['peers'])} | {_f(b['cpu_pct']['per_call'])} "
            f"| {_f(b['cpu_pct']['bench_clients'])} | {_f(b['rss_mb_per_call'])} |")
    lines += [
        "",
        "## More per step",
        "",
        "| N | one-way to SIP / to Matrix (median) | setup: invite→INVITE / 200→answer (median) "
        "| callers' PUT of m.call.* (median) | idle CPU per worker | RSS per worker (idle → busy) "
        "| RSS growth per call | PBX side CPU | Synapse CPU | other load on the machine "
        "| callers' send lateness p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ow = r.get("one_way_ms", {})
        so = r["setup_overhead_ms"]
        rss = r["rss_mb"]
        cpu = r["cpu_pct"]
        lines.append(
            f"| {r['calls_requested']} "
            f"| {_f(ow.get('to_sip', {}).get('median'))} / "
            f"{_f(ow.get('to_matrix', {}).get('median'))} "
            f"| {_f(so['invite_to_sip_invite']['median'])} / "
            f"{_f(so['sip_200_to_matrix_answer']['median'])} "
            f"| {_f(so.get('client_event_put', {}).get('median'))} "
            f"| {_f(cpu['idle_per_worker'])} | {_f(rss['per_worker_idle'])} → "
            f"{_f(rss['per_worker'])} | {_f(rss['growth_per_call'], 2)} "
            f"| {_f(cpu['pbx_side'])} | {_f(cpu['synapse'])} | {_f(cpu.get('others'))} "
            f"| {_f(r['bench_client']['send_late_ms'].get('p95'), 2)} |")
    if meta.get("stopped"):
        lines += ["", f"Stopped: {meta['stopped']}"]
    lines += ["", "Method: see the docstring of bench/calls.py and bench/_media.py; analysis in "
              "bench/results/README.md.", ""]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["calls_requested"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    cpu = [r["cpu_pct"] for r in results]
    ax1.plot(n, [c["total"] for c in cpu], "o-", label="bridge total")
    ax1.plot(n, [c["workers"] for c in cpu], "s--", label="bridge workers")
    ax1.plot(n, [c["controller"] for c in cpu], "^--", label="bridge controller")
    base = [(r["calls_requested"], r["baseline"]["cpu_pct"]["peers"])
            for r in results if r.get("baseline")]
    if base:
        ax1.plot([x for x, _ in base], [y for _, y in base], "d-", label="baseline: aiortc legs")
    ax1.plot(n, [c["bench_clients"] for c in cpu], "x:", label="bench callers")
    ax1.plot(n, [c["machine"] for c in cpu], "k:", label="whole machine")
    cores = os.cpu_count() or 1
    ax1.axhline(100 * cores, color="grey", lw=0.8)
    ax1.set_xlabel("concurrent calls N")
    ax1.set_ylabel("CPU, % of one core")
    ax1.set_title("CPU")
    ax1.legend(fontsize=8)
    loss = [r["frame_loss_pct"] for r in results]
    ax2.plot(n, [x["end_to_end"]["to_sip"] for x in loss], "o-", label="to SIP (end to end)")
    ax2.plot(n, [x["end_to_end"]["to_matrix"] for x in loss], "s-",
             label="to Matrix (end to end)")
    ax2.plot(n, [x["bridge"]["to_sip"] for x in loss], "o--", label="to SIP (bridge counters)")
    ax2.plot(n, [x["bridge"]["to_matrix"] for x in loss], "s--",
             label="to Matrix (bridge counters)")
    base = [(r["calls_requested"], max(v or 0.0 for v in r["baseline"]["frame_loss_pct"].values()))
            for r in results if r.get("baseline")]
    if base:
        ax2.plot([x for x, _ in base], [y for _, y in base], "d:",
                 label="baseline, worse direction")
    ax2.axhline(1.0, color="red", lw=0.8, label="1 % goal")
    ax2.set_yscale("symlog", linthresh=1.0)
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("concurrent calls N")
    ax2.set_ylabel("frames lost, % (linear below 1, log above)")
    ax2.set_title("Frame loss")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rewrite(out: Path) -> None:
    """latest.md and latest.png again from latest.json (after a change to this module)."""
    data = json.loads((out / "latest.json").read_text())
    (out / "latest.md").write_text(markdown(data["steps"], data["meta"]))
    plot(data["steps"], out / "latest.png")


def write_all(out: Path, results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    from bench.calls import passed

    failed = [r for r in results if not passed(r, args.max_loss)]
    held = [r["calls_requested"] for r in results if passed(r, args.max_loss)]
    stopped = ""
    if failed:
        stopped = (f"highest N that held: {max(held) if held else 0}; first failing step "
                   f"N={failed[0]['calls_requested']}: {failed[0]['calls_established']} of "
                   f"{failed[0]['calls_requested']} calls up, end-to-end loss "
                   f"{json.dumps(failed[0]['frame_loss_pct']['end_to_end'])} %")
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "cores": os.cpu_count() or 1,
        "seconds": args.seconds,
        "command": "bench/calls.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if k in ("ramp", "seconds", "setup_rate", "calls_per_proc") and v),
        "stopped": stopped,
    }
    (out / "latest.json").write_text(json.dumps({"meta": meta, "steps": results}, indent=2))
    (out / "latest.md").write_text(markdown(results, meta))
    plot(results, out / "latest.png")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    rewrite(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results"))
