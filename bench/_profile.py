"""Sum up py-spy's raw (collapsed) stacks of the bridge's processes by where the CPU goes.

``bench/calls.py --profile-dir DIR`` records ``DIR/controller.txt`` and ``DIR/workerK.txt``
(``py-spy record --threads --native --format raw``, idle threads not sampled) and the
threads' CPU from /proc (``DIR/threads.json``); this module turns them into ``DIR/summary.md``:

    .venv/bin/python bench/_profile.py DIR

py-spy's samples include threads that wait (its idle check misses futex and select waits
here), so samples whose innermost frames wait for work are dropped, and each thread's CPU as
/proc counted it is split over the categories of its remaining samples. A sample belongs to
the innermost component (aiortc, the bridge's pump, pjsua2, ...) among its frames, asyncio and
thread hand-offs inside it included (their total is given separately); one with only
event-loop frames counts as loop overhead. A thread without a busy sample counts by its job
(decoder threads as codec, pjmedia's threads as pjsua2).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path
from typing import Any

CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("codec: av encode/decode/resample (aiortc)",
     ("aiortc/codecs/", "av/", "AudioResampler", "(frame.c", "(context.c", "(codeccontext.c",
      "(resampler.c", "(plane.c", "(packet.c", "libavcodec", "libswresample", "libavutil")),
    ("SRTP/DTLS (pylibsrtp, OpenSSL, aiortc's DTLS transport)",
     ("pylibsrtp", "libsrtp", "libcrypto", "libssl", "rtcdtlstransport.py", "_cffi_backend")),
    ("ICE/UDP (aioice, its socket sends)", ("aioice/",)),
    ("aiortc RTP/RTCP, jitter buffer, tracks",
     ("aiortc/rtcrtp", "aiortc/jitterbuffer", "aiortc/rtp.py", "aiortc/rtcpeerconnection",
      "aiortc/mediastreams", "aiortc/rtcicetransport", "aiortc/clock", "aiortc/stats")),
    ("bridge pump: g711_rtp.py, tracks.py, media_bridge.py, audio.py, framecopy, dtmf",
     ("bridge/media/g711_rtp.py", "bridge/media/fast_receive.py", "bridge/media/tracks.py",
      "bridge/sip/media_bridge.py", "bridge/sip/audio.py", "bridge/sip/framecopy.py",
      "bridge/media/dtmf.py", "bridge/media/webrtc.py")),
    ("pjsua2/pjmedia (SIP, RTP, conference, G.711, in C)", ("pjsua2", "_pjsua2", "libpj")),
    ("IPC, logging", ("bridge/sip/ipc.py", "Worker._read_loop", "Worker._send", "Worker._on_event",
                      "IpcLogHandler", "logging/", "bridge/log.py")),
    ("controller: Matrix, calls, HTTP (mautrix, aiohttp)",
     ("mautrix/", "aiohttp/", "bridge/matrix/", "bridge/calls/", "bridge/web/", "yarl/",
      "multidict/", "bridge/app.py", "bridge/db/", "aiosqlite/", "sqlite")),
    ("event loop and thread hand-offs (asyncio, futures, queues)",
     ("asyncio/", "selectors.py", "threading.py", "concurrent/futures", "queue.py",
      "_asynciomodule.c", "selectmodule", "socketmodule")),
]
OTHER = "other"
IDLE = "idle"
GIL = "waiting for the GIL"

#: innermost named frames of a thread that waits for work (not CPU)
_WAITS = ("Condition.wait", "_queue_SimpleQueue_get", "epoll_wait", "pj_sock_select",
          "select (libc", "EpollSelector.select", "lock_PyThread_acquire_lock",
          "Event.wait", "Thread.join", "sem_wait", "poll (libc", "nanosleep")


LOOP = CATEGORIES[-1][0]


def categorize(frames: list[str]) -> tuple[str, bool]:
    """(component, in loop/thread machinery): the innermost frame of a component owns the
    sample, asyncio and thread hand-off frames inside it included; ``True`` when the sample
    itself was in that machinery."""
    named = [f for f in frames if not re.match(r"^0x[0-9a-f]+ \(", f)]
    inner = named[-4:]
    if any(w in f for f in inner for w in _WAITS):
        return IDLE, False
    if named and named[-1].startswith("pthread_cond_timedwait"):
        return GIL, False  # released the GIL around a call and waits to take it back
    machinery: bool | None = None
    for frame in reversed(named):
        for name, keys in CATEGORIES:
            if any(k in frame for k in keys):
                if name == LOOP:
                    if machinery is None:
                        machinery = True
                    break
                return name, bool(machinery)
        else:
            continue
    return (LOOP, True) if machinery else (OTHER, False)


_THREAD = re.compile(r"^thread \((\d+)\)(?::\s*(.*))?$")


def read_raw(path: Path) -> list[tuple[int, str, list[str], int]]:
    """(tid, thread name, frames root→leaf, samples) per line of py-spy's raw output."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        tid, thread = 0, ""
        m = _THREAD.match(frames[0])
        if m:
            tid, thread = int(m.group(1)), (m.group(2) or "")
            frames = frames[1:]
        out.append((tid, re.sub(r"_\d+$", "", thread), frames, int(count)))
    return out


_BY_THREAD = {"audio-decoder": CATEGORIES[0][0], "clock": CATEGORIES[5][0],
              "media": CATEGORIES[5][0], "ev_thread": CATEGORIES[5][0],
              "pjsua-owner": CATEGORIES[5][0]}


def thread_role(name: str) -> str:
    return {"MainThread": "main (asyncio: aiortc, pump, IPC)",
            "pjsua-owner": "pjsua2 owner (libHandleEvents: SIP, RTP I/O)",
            "audio-decoder": "aiortc decoder threads (one per call)",
            "asyncio": "aiortc encoder (default executor threads)",
            "clock": "pjmedia clock (conference, G.711, frame callbacks)",
            "media": "pjmedia worker threads", "ev_thread": "pjmedia worker threads",
            }.get(name, f"other ({name})")


def analyse(path: Path, threads: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU (% core) of one process by category and by thread: /proc's per-thread CPU split
    over the categories of that thread's non-idle py-spy samples."""
    proc_cpu = {t["tid"]: (t["name"], t["cpu_pct"]) for t in threads}
    samples: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    machinery: dict[int, int] = collections.Counter()
    names: dict[int, str] = {}
    for tid, name, frames, n in read_raw(path):
        cat, mach = categorize(frames)
        samples[tid][cat] += n
        if mach:
            machinery[tid] += n
        if name:
            names[tid] = name
    cats: collections.Counter[str] = collections.Counter()
    roles: collections.Counter[str] = collections.Counter()
    gil: collections.Counter[str] = collections.Counter()
    busy_all: collections.Counter[str] = collections.Counter()
    in_machinery = 0.0
    for tid, (pname, cpu) in proc_cpu.items():
        name = names.get(tid) or pname
        role = thread_role(name)
        roles[role] += cpu
        c = samples.get(tid, collections.Counter())
        busy = {k: v for k, v in c.items() if k not in (IDLE, GIL)}
        total = sum(busy.values())
        gil[role] += c.get(GIL, 0)
        busy_all[role] += total + c.get(GIL, 0)
        if total == 0:  # no busy sample caught: the thread's own job
            cats[_BY_THREAD.get(name, "unattributed (no py-spy samples)")] += cpu
            continue
        for k, v in busy.items():
            cats[k] += cpu * v / total
        in_machinery += cpu * machinery.get(tid, 0) / total
    return {"cpu": sum(cpu for _n, cpu in proc_cpu.values()), "categories": cats,
            "threads": roles, "machinery": in_machinery,
            "gil_wait": {r: (gil[r] / busy_all[r] if busy_all[r] else 0.0) for r in roles}}


def summarize(folder: Path) -> str:
    tj = folder / "threads.json"
    threads: dict[str, Any] = json.loads(tj.read_text()) if tj.exists() else {}
    spy = threads.pop("py-spy_cpu_pct", None)
    lines = ["# Where the bridge's CPU goes", "",
             "% of one core over the measurement: each thread's CPU from /proc, split over "
             "categories by the share of that thread's py-spy samples (idle waits left out). "
             "GIL wait: share of a thread's non-idle samples spent waiting to take the GIL."
             + (f" py-spy itself used {spy} % of a core meanwhile." if spy is not None else ""),
             ""]
    workers = []
    for path in sorted(folder.glob("*.txt")):
        name = path.stem
        a = analyse(path, threads.get(name, []))
        if name.startswith("worker"):
            workers.append(a)
        lines += [f"## {name}: {a['cpu']:.1f} %", "", "| category | % core |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in a["categories"].most_common() if v >= 0.05]
        lines += ["", f"Of all this, in asyncio/thread/queue machinery (task switches, futures, "
                  f"self-pipe wake-ups, hand-offs between threads): {a['machinery']:.1f} %."]
        lines += ["", "| thread | % core | GIL wait |", "|---|---|---|"]
        lines += [f"| {k} | {v:.1f} | {100 * a['gil_wait'].get(k, 0):.0f} % |"
                  for k, v in a["threads"].most_common() if v >= 0.05]
        lines.append("")
    if workers:
        k = len(workers)
        cats: collections.Counter[str] = collections.Counter()
        roles: collections.Counter[str] = collections.Counter()
        for a in workers:
            cats.update(a["categories"])
            roles.update(a["threads"])
        cpu = sum(a["cpu"] for a in workers) / k
        mach = sum(a["machinery"] for a in workers) / k
        lines += [f"## Mean of the {k} workers: {cpu:.1f} % per worker", "",
                  "| category | % core per worker | share |", "|---|---|---|"]
        lines += [f"| {c} | {v / k:.1f} | {100 * v / k / max(cpu, 1e-9):.0f} % |"
                  for c, v in cats.most_common() if v >= 0.05]
        lines += ["", f"In asyncio/thread/queue machinery inside those: {mach:.1f} % per worker "
                  f"({100 * mach / max(cpu, 1e-9):.0f} %)."]
        lines += ["", "| thread | % core per worker |", "|---|---|"]
        lines += [f"| {c} | {v / k:.1f} |" for c, v in roles.most_common() if v >= 0.05]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    args = ap.parse_args()
    text = summarize(Path(args.folder))
    (Path(args.folder) / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
