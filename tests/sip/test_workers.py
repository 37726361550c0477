"""Worker lifecycle: calls spread over workers, a killed worker is replaced and its call
reported failed, a clean stop ends every call with BYE."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from bridge.sip import procstat
from bridge.sip.events import Answered, EarlyMedia, Ended, Failed
from bridge.sip.forkserver import _open_pidfd
from bridge.sip.pool import WorkerPool
from tests.sip.conftest import StartPool, eventually, sip_config, trunk
from tests.sip.sippctl import Sipp


async def test_more_than_four_calls_spread_over_workers(tmp_path: Path, start_pool: StartPool):
    uas = Sipp(tmp_path, "uas_answer", rtp_echo=True, calls=6).start()
    pool = await start_pool(sip_config(trunk(domain=uas.address), workers=2))
    calls = [await pool.make_call("acme", f"10{i}", from_user="alice=example.org")
             for i in range(6)]
    for call in calls:
        await call.wait_for(Answered, 10)
    per_worker = sorted(w.calls for w in pool.workers())
    assert per_worker == [3, 3], pool.workers()
    ports = {w.transports for w in pool.workers()}
    assert len(ports) == 2  # each worker listens on its own SIP port
    # audio flows on a call of each worker
    for worker in (0, 1):
        call = next(c for c in calls if c.worker == worker)
        await call.play_tone(1000 + 200 * worker, -12)
        report = await call.probe_audio(0.5)
        assert abs(report.freq_hz - (1000 + 200 * worker)) <= 20, report
    for call in calls:
        await call.hangup()
    for call in calls:
        assert isinstance(await call.wait_ended(10), Ended)
    assert await uas.done(15) == 0, uas.explain()


async def _places_a_call(pool: WorkerPool) -> None:
    """The pool still places a call that is answered and ends cleanly."""
    again = await pool.make_call("acme", "101", from_user="alice=example.org")
    await again.wait_for(Answered, 10)
    await again.hangup()
    assert isinstance(await again.wait_ended(10), Ended)


async def test_killed_worker_is_replaced_and_its_call_failed(tmp_path: Path,
                                                            start_pool: StartPool):
    uas = Sipp(tmp_path, "uas_answer", rtp_echo=True, calls=2).start()
    try:
        pool = await start_pool(sip_config(trunk(domain=uas.address), workers=2))
        call = await pool.make_call("acme", "100", from_user="alice=example.org")
        await call.wait_for(Answered, 10)
        victim = pool.workers()[call.worker]
        os.kill(victim.pid, signal.SIGKILL)
        end = await call.wait_ended(10)
        assert isinstance(end, Failed) and "died" in end.reason, end
        replaced = await eventually(
            lambda: (w := pool.workers()[victim.index]).alive and w.pid != victim.pid and w,
            15, "a replacement worker")
        assert replaced.restarts == 1
        await _places_a_call(pool)  # on the new worker too
    finally:
        uas.stop()


async def test_hung_worker_is_killed_by_the_heartbeat(start_pool: StartPool):
    pool = await start_pool(sip_config(trunk(), workers=1))
    victim = pool.workers()[0]
    os.kill(victim.pid, signal.SIGSTOP)  # alive but silent: only the heartbeat can tell
    try:
        replaced = await eventually(
            lambda: (w := pool.workers()[0]).alive and w.pid != victim.pid and w,
            15, "the heartbeat to replace a silent worker")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGCONT)
    assert replaced.restarts == 1


async def test_stop_ends_calls_with_bye_and_cancel(tmp_path: Path, start_pool: StartPool):
    answering = Sipp(tmp_path, "uas_answer", rtp_echo=True).start()
    ringing = Sipp(tmp_path, "uas_early", rtp_echo=True).start()
    pool = await start_pool(sip_config(trunk("acme", domain=answering.address),
                                       trunk("bolt", domain=ringing.address)))
    up = await pool.make_call("acme", "100", from_user="alice=example.org")
    await up.wait_for(Answered, 10)
    early = await pool.make_call("bolt", "100", from_user="alice=example.org")
    await early.wait_for(EarlyMedia, 10)
    await pool.stop()
    assert (await up.wait_ended(1)) == Ended(200, "OK", "local") or up.end
    assert isinstance(up.end, Ended) and up.end.by == "local", up.end
    assert await early.wait_ended(1) == Ended(487, "Request Terminated", "local")
    assert await answering.done(10) == 0, answering.explain()  # got its BYE
    assert await ringing.done(10) == 0, ringing.explain()  # got its CANCEL


async def test_a_stalled_controller_does_not_kill_healthy_workers(tmp_path: Path,
                                                                  start_pool: StartPool):
    """The controller's own event loop blocks longer than the heartbeat timeout (a slow
    disk, a long GC): the worker answered its pings all along and must not be killed."""
    import time

    uas = Sipp(tmp_path, "uas_answer", rtp_echo=True).start()
    pool = await start_pool(sip_config(trunk(domain=uas.address)))
    call = await pool.make_call("acme", "100", from_user="alice=example.org")
    await call.wait_for(Answered, 10)
    pid = pool.workers()[0].pid
    time.sleep(pool.config.heartbeat_timeout_s + 2)  # block the loop on purpose
    await eventually(lambda: pool.workers()[0].alive, 3, "the worker alive")
    import asyncio

    await asyncio.sleep(pool.config.heartbeat_interval_s * 3)
    w = pool.workers()[0]
    assert (w.pid, w.restarts, w.alive) == (pid, 0, True)
    assert not call.ended
    await call.hangup()
    assert isinstance(await call.wait_ended(10), Ended)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for a parent that does not reap it."""
    try:
        return procstat.stat_fields(pid)[procstat.STATE] != "Z"
    except FileNotFoundError:
        return False


async def test_workers_are_forked_and_share_the_fork_servers_fate(tmp_path: Path,
                                                                  start_pool: StartPool):
    """Workers are children of the fork server (bridge/sip/forkserver.py). If it dies, the
    pool stops its workers (nobody would report their exits), reports their calls failed,
    and a new fork server starts their replacements."""
    uas = Sipp(tmp_path, "uas_answer", rtp_echo=True, calls=2).start()
    try:
        pool = await start_pool(sip_config(trunk(domain=uas.address), workers=2))
        server = pool.fork_server_pid
        assert server is not None
        old = {w.index: w.pid for w in pool.workers()}
        for pid in old.values():
            assert int(procstat.stat_fields(pid)[procstat.PPID]) == server
            with open(f"/proc/{pid}/comm") as f:
                assert f.read().strip() == "sip-worker"  # what top shows
        with open(f"/proc/{server}/comm") as f:
            assert f.read().strip() == "sip-forkserver"
        # each is held by a pidfd, so a kill never reaches a process that reused its PID
        for w in pool._workers.values():
            assert w.proc is not None and w.proc._pidfd is not None
        call = await pool.make_call("acme", "100", from_user="alice=example.org")
        await call.wait_for(Answered, 10)
        # a SIGTERM to the whole process group (or a terminal's Ctrl-C) is the controller's
        # and the workers' to handle: the fork server stays
        os.kill(server, signal.SIGTERM)
        os.kill(server, signal.SIGINT)
        await asyncio.sleep(1.0)
        assert _running(server) and pool.fork_server_pid == server
        assert call.state == "answered" and {w.index: w.pid for w in pool.workers()} == old
        os.kill(server, signal.SIGKILL)
        end = await call.wait_ended(10)
        assert isinstance(end, Failed) and "died" in end.reason, end
        await eventually(lambda: all(not _running(pid) for pid in old.values()), 10,
                         "the old workers to stop")
        await eventually(lambda: all(w.alive and w.pid != old[w.index]
                                     for w in pool.workers()), 20, "replacement workers")
        assert pool.fork_server_pid not in (None, server)
        await _places_a_call(pool)
    finally:
        uas.stop()


def test_a_pidfd_is_only_opened_for_the_fork_servers_own_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        fd = _open_pidfd(child.pid, os.getpid())  # our child: pinned
        assert fd is not None
        os.close(fd)
        assert _open_pidfd(child.pid, 1) is None  # someone else's child: not ours to kill
    finally:
        child.kill()
        child.wait()
    assert _open_pidfd(child.pid, os.getpid()) is None  # gone
