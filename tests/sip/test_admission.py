"""Admission control (bridge/sip/admission.py): with the machine's CPU nearly full, new calls
are refused both ways while calls in progress go on; once it is free again calls go through.

The load is real (one spinning process per core) and so is the reading (/proc/stat)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.sip.admission import (
    Admission,
    CpuIdle,
    LeastIdle,
    cgroup_quota_cores,
    cgroup_times_reader,
    read_cpu_times,
    unseen_share,
)
from bridge.sip.errors import CapacityExceeded, Overloaded
from bridge.sip.events import Answered
from bridge.sip.handles import CallHandle
from bridge.sip.pool import WorkerPool
from tests.harness.cpu_load import busy_cores
from tests.sip.conftest import StartPool, eventually, sip_config, trunk
from tests.sip.sippctl import Sipp
from tests.sip.test_inbound_calls import uac

MIN_IDLE = 50.0


def test_read_cpu_times_from_proc_and_bad_files(tmp_path: Path) -> None:
    free, total = read_cpu_times()
    assert 0 < free < total
    stat = tmp_path / "stat"
    #         user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 20 30 400 5 6 7 8 50 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert read_cpu_times(stat) == (20 + 400 + 5, 100 + 20 + 30 + 400 + 5 + 6 + 7 + 8)
    for bad in ("", "intr 1 2 3\n", "cpu 1 2\n", "cpu a b c d e f g h\n"):
        stat.write_text(bad)
        with pytest.raises(ValueError):
            read_cpu_times(stat)


def test_idle_share_is_averaged_over_the_window() -> None:
    samples = iter([(0, 0), (50, 100), (60, 200), (160, 300), (260, 400)])
    idle = CpuIdle(window=2, read=lambda: next(samples))
    idle.sample()
    assert idle.percent is None  # one sample says nothing yet
    idle.sample()
    assert idle.percent == 50.0
    idle.sample()
    assert idle.percent == 30.0  # (60 - 0) / (200 - 0)
    idle.sample()
    assert idle.percent == 55.0  # (160 - 50) / (300 - 100): the first sample left
    idle.sample()
    assert idle.percent == 100.0


def test_admission_reserves_for_calls_not_yet_in_the_average() -> None:
    samples = iter([(0, 0), (300, 1000)])  # 30 % free
    idle = CpuIdle(read=lambda: next(samples))
    idle.sample()
    admission = Admission(20.0, cpu_count=2, idle=idle, call_cost_pct=2.0)
    assert admission.refusal(0) is None  # no reading yet: let calls in
    idle.sample()
    assert admission.refusal(0) is None
    assert admission.refusal(9.5) is None  # 30 - 9.5 x 1 = 20.5 % left
    reason = admission.refusal(10.5)  # 30 - 10.5 = 19.5 % left
    assert reason is not None and "30 % idle" in reason and "10.5 call(s)" in reason
    assert "sip.min_idle_cpu is 20 %" in reason
    assert Admission(0.0, 2, idle).refusal(1000) is None  # 0: off


def test_a_call_shows_in_the_average_as_the_window_passes() -> None:
    assert unseen_share(None, 100.0) == 1.0  # ringing: no media yet
    assert unseen_share(100.0, 100.0, window_s=5) == 1.0
    assert unseen_share(100.0, 102.0, window_s=5) == pytest.approx(0.6)
    assert unseen_share(100.0, 105.0, window_s=5) == 0.0
    assert unseen_share(100.0, 500.0, window_s=5) == 0.0


def test_container_quota_from_cgroup_files(tmp_path: Path) -> None:
    """This machine runs no CPU quota, so cgroup v2's cpu.max and cpu.stat are written here
    as a container with ``--cpus 2`` would show them."""
    assert cgroup_quota_cores(tmp_path) is None  # no cgroup v2 files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota_cores(tmp_path) is None  # unlimited
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert cgroup_quota_cores(tmp_path) is None
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert cgroup_quota_cores(tmp_path) == 2.0

    now_ns = [0]
    stat = tmp_path / "cpu.stat"
    read = cgroup_times_reader(2.0, tmp_path, clock=lambda: now_ns[0])
    stat.write_text("usage_usec 1000000\nuser_usec 800000\nsystem_usec 200000\n")
    quota = CpuIdle(read=read)
    quota.sample()
    now_ns[0] = 1_000_000_000  # 1 s: 2 s of CPU allowed, 1.5 s used
    stat.write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    quota.sample()
    assert quota.percent == pytest.approx(25.0)
    stat.write_text("user_usec 1\n")
    with pytest.raises(ValueError, match="usage_usec"):
        read()

    host = iter([(0, 0), (900, 1000)])  # the host: 90 % free
    host_idle = CpuIdle(read=lambda: next(host))
    least = LeastIdle(host_idle, CpuIdle(read=iter([(0, 0), (250, 1000)]).__next__))
    least.sample()
    assert least.percent is None
    least.sample()
    assert least.percent == 25.0  # the quota is the tighter one


async def _wait_idle(pool: WorkerPool, below: bool, timeout_s: float) -> float:
    def reached() -> bool:
        idle = pool.cpu_idle_percent
        return idle is not None and (idle < MIN_IDLE if below else idle >= MIN_IDLE + 10)

    await eventually(reached, timeout_s, f"CPU idle {'below' if below else 'above'} "
                     f"{MIN_IDLE} %")
    value = pool.cpu_idle_percent
    assert value is not None
    return value


async def test_overload_refuses_new_calls_and_keeps_the_ones_in_progress(
        tmp_path: Path, start_pool: StartPool) -> None:
    uas = Sipp(tmp_path / "uas", "uas_answer", calls=2, timeout_s=90).start()
    accepted: asyncio.Queue[CallHandle] = asyncio.Queue()

    async def on_call(handle: CallHandle) -> None:
        await handle.answer()
        await accepted.put(handle)

    pool = await start_pool(sip_config(trunk(domain=uas.address), min_idle_cpu=MIN_IDLE),
                            on_incoming_call=on_call)
    await _wait_idle(pool, below=False, timeout_s=20)
    first = await pool.make_call("acme", "100", from_user="alice=example.org")
    await first.wait_for(Answered, 10)

    with busy_cores():
        idle = await _wait_idle(pool, below=True, timeout_s=15)
        with pytest.raises(Overloaded, match="overloaded") as refused:
            await pool.make_call("acme", "100", from_user="bob=example.org")
        assert isinstance(refused.value, CapacityExceeded)  # callers that know only that
        caller = uac(tmp_path / "in", pool, "uac_rejected", status="503").start()
        assert await caller.done(20) == 0, caller.explain()
        assert pool.overload_refusals == {"outbound": 1, "inbound": 1}, idle
        assert accepted.empty()
        assert first.state == "answered" and not first.ended

    await _wait_idle(pool, below=False, timeout_s=20)
    second = await pool.make_call("acme", "100", from_user="bob=example.org")
    await second.wait_for(Answered, 10)
    caller = uac(tmp_path / "in2", pool, hold_ms=500).start()
    inbound = await asyncio.wait_for(accepted.get(), 10)
    await inbound.wait_for(Answered, 10)
    assert await caller.done(20) == 0, caller.explain()
    for call in (first, second):
        await call.hangup()
        await call.wait_ended(10)
    assert await uas.done(20) == 0, uas.explain()
    assert pool.overload_refusals == {"outbound": 1, "inbound": 1}
