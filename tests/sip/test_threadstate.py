"""pjmedia's clock thread keeps one Python thread state (bridge/sip/threadstate.py).

Runs pjsua2 on the null sound device in a child process (as a worker does; pjsua2 is one
per process) with two of the worker's frame ports connected through the conference bridge.
A ``threading.local`` counter bumped in every callback shows how long the thread state
lasts: it lives in the thread state, so it counts up only while the same one is kept, and
starts again at 1 whenever SWIG makes a new one. The control run without
``keep_thread_state`` shows that second case, so the check can fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, json, os, sys, threading, time
from bridge.sip import audio, framecopy, threadstate
from tests.harness import bare_pjsua

keep = sys.argv[1] == "keep"
seen = threading.local()
counts = {}  # native thread id -> highest count its thread state reached

def counted():
    if keep:
        threadstate.keep_thread_state()
    seen.n = getattr(seen, "n", 0) + 1
    tid = threading.get_native_id()
    counts[tid] = max(counts.get(tid, 0), seen.n)

audio.keep_thread_state = counted
ep = bare_pjsua.init()
ep.libStart()
pool = audio.AudioPool(2, 8000, framecopy.select(), asyncio.new_event_loop())
pool.create_ports()
a, b = pool._ports
result = {}

def wait(seconds):  # pjsua's timers (the sound device's auto-close) run in libHandleEvents
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ep.libHandleEvents(20)

for name in ("first", "second"):
    counts.clear()
    a.startTransmit(b)
    b.startTransmit(a)
    wait(1.0)
    a.stopTransmit(b)
    b.stopTransmit(a)
    result[name] = dict(counts)
    wait(2.5)  # pjsua closes the null sound device after 1 s: its clock thread ends
result["kept"] = threadstate.kept_threads()
result["freed"] = threadstate.freed
print(json.dumps(result), flush=True)
os._exit(0)
"""


def run(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_clock_thread_keeps_its_thread_state_and_an_ended_ones_is_freed() -> None:
    kept = run("keep")
    first, second = kept["first"], kept["second"]
    assert isinstance(first, dict) and isinstance(second, dict)
    assert len(first) == 1 and len(second) == 1, kept  # one clock thread at a time
    # 2 ports x 2 callbacks x 50 ticks in 1 s, all on one thread state
    assert min(first.values()) >= 150 and min(second.values()) >= 150, kept
    # the second call got a new clock thread; the first one's thread state was freed
    assert set(first) != set(second), kept
    assert kept["kept"] == [int(t) for t in second] and kept["freed"] == 1, kept


def test_without_it_swig_makes_a_thread_state_per_callback() -> None:
    churn = run("churn")
    first = churn["first"]
    assert isinstance(first, dict) and len(first) == 1
    assert list(first.values()) == [1], churn  # every callback saw a fresh thread state
    assert churn["kept"] == [] and churn["freed"] == 0


def test_threads_python_started_are_left_alone() -> None:
    """Their thread state is Python's to free when they end: keeping (and later freeing) it
    here would free it twice."""
    import threading

    from bridge.sip import threadstate

    before = threadstate.kept_threads()
    threadstate.keep_thread_state()  # the main thread
    worker = threading.Thread(target=threadstate.keep_thread_state)
    worker.start()
    worker.join()
    assert threadstate.kept_threads() == before
