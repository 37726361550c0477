"""Admission control (bridge/sip/admission.py): with the machine's CPU nearly full, new calls
are refused both ways while calls in progress go on; once it is free again calls go through.

The load is real (one spinning process per core) and so is the reading (/proc/stat)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bridge.sip.admission import (
    Admission,
    CallCost,
    CpuIdle,
    LeastIdle,
    cgroup_quota_cores,
    cgroup_times_reader,
    own_cgroup,
    read_cpu_times,
    read_process_cpu,
    tightest_cgroup_quota,
    unseen_share,
)
from bridge.sip.errors import CapacityExceeded, Overloaded
from bridge.sip.events import Answered
from bridge.sip.handles import CallHandle
from bridge.sip.pool import WorkerPool
from bridge.sip.procstat import CLK_TCK
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
    admission = Admission(20.0, cpu_count=2, idle=idle, cost=CallCost(default_pct=2.0))
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


def test_the_tightest_quota_from_our_cgroup_up(tmp_path: Path) -> None:
    """A systemd service with CPUQuota= under a slice with its own quota, written as cgroup
    v2 shows them (this machine runs none)."""
    root = tmp_path / "cgroup"
    service = root / "system.slice" / "bridge.service"
    service.mkdir(parents=True)
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/system.slice/bridge.service\n")
    assert own_cgroup(root, self_cgroup) == service
    assert tightest_cgroup_quota(root, self_cgroup) is None  # no cpu.max anywhere
    (root / "system.slice" / "cpu.max").write_text("max 100000\n")
    (service / "cpu.max").write_text("150000 100000\n")  # CPUQuota=150%
    assert tightest_cgroup_quota(root, self_cgroup) == (1.5, service)
    (root / "system.slice" / "cpu.max").write_text("100000 100000\n")  # the slice: 1 core
    assert tightest_cgroup_quota(root, self_cgroup) == (1.0, root / "system.slice")
    # a container: its own cgroup is the root of what it sees
    self_cgroup.write_text("0::/\n")
    (root / "cpu.max").write_text("200000 100000\n")
    assert tightest_cgroup_quota(root, self_cgroup) == (2.0, root)
    # cgroup v1 lines or an unreadable file: the root; '..' is dropped, never climbed out
    self_cgroup.write_text("4:memory:/x\n1:cpu:/\n")
    assert own_cgroup(root, self_cgroup) == root
    assert own_cgroup(root, tmp_path / "missing") == root
    self_cgroup.write_text("0::/../../etc\n")
    assert own_cgroup(root, self_cgroup) == root / "etc"


def test_process_cpu_from_proc_and_a_command_name_with_parentheses(tmp_path: Path) -> None:
    assert read_process_cpu(os.getpid()) > 0
    (tmp_path / "42").mkdir()
    fields = ["S", "1"] + ["0"] * 9 + [str(3 * CLK_TCK), str(CLK_TCK)] + ["0"] * 30
    (tmp_path / "42" / "stat").write_text("42 (sip) worker) " + " ".join(fields))
    assert read_process_cpu(42, tmp_path) == pytest.approx(4.0)
    (tmp_path / "42" / "stat").write_text("42 (sip) S 1")
    with pytest.raises(ValueError, match="too few"):
        read_process_cpu(42, tmp_path)


def test_call_cost_is_learned_from_the_workers_that_hold_calls() -> None:
    cpu = {10: 0.0, 11: 0.0, 12: 0.0}

    def read(pid: int) -> float:
        if pid not in cpu:
            raise OSError("no such process")
        return cpu[pid]

    cost = CallCost(window=5, default_pct=2.0, read=read)
    assert cost.pct == 2.0 and not cost.learned
    for t in range(6):  # 2 calls on worker 10 use 6 % of a core: 3 % each
        cost.observe(float(t), {10: 2, 11: 0, 99: 1})  # 11 idle, 99 gone: not counted
        cpu[10] += 0.06
        cpu[11] += 0.5
    assert cost.learned and cost.pct == pytest.approx(3.0)
    cost.observe(6.0, {10: 2, 12: 1})  # worker 12 joins: not in the window's first sample
    cpu[10] += 0.06
    cpu[12] += 0.5
    assert cost.pct == pytest.approx(3.0)
    for t in range(7, 30):  # now 4 % a call: the smoothed cost follows within seconds
        cost.observe(float(t), {10: 2})
        cpu[10] += 0.08
        if t == 8:
            assert 3.0 < cost.pct < 4.0
    assert cost.pct == pytest.approx(4.0, abs=0.05)
    before = cost.pct
    for t in range(12, 18):  # one call only: too few to learn from
        cost.observe(float(t), {10: 1})
        cpu[10] += 0.5
    assert cost.pct == before
    huge = CallCost(window=2, read=read)
    for t in range(3):
        huge.observe(float(t), {10: 2})
        cpu[10] += 1.0
    assert huge.pct == 10.0  # held to the range


def test_admission_reserves_what_a_call_costs_here() -> None:
    idle = CpuIdle(read=iter([(0, 0), (300, 1000)]).__next__)  # 30 % free
    idle.sample()
    idle.sample()
    cost = CallCost(default_pct=2.0)
    admission = Admission(20.0, cpu_count=2, idle=idle, cost=cost)
    assert admission.refusal(unseen=9) is None  # 9 calls x 1 % of the machine: 21 % left
    cost.pct = 4.0  # learned: this machine is twice as slow
    assert admission.refusal(unseen=9) is not None  # 9 x 2 %: 12 % left


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


async def test_a_real_pool_learns_what_its_calls_cost(tmp_path: Path,
                                                      start_pool: StartPool) -> None:
    uas = Sipp(tmp_path / "uas", "uas_answer", calls=2, timeout_s=60).start()
    pool = await start_pool(sip_config(trunk(domain=uas.address), min_idle_cpu=1))
    assert pool.call_cost_percent == 2.0  # the default until calls have been measured
    calls = [await pool.make_call("acme", "100", from_user=f"u{i}=example.org")
             for i in range(2)]
    for call in calls:
        await call.wait_for(Answered, 10)
    admission = pool._admission
    assert admission is not None
    # two answered calls through a whole 5 s window, from their worker's /proc/PID/stat
    await eventually(lambda: admission.cost.learned, 15, "the call cost learned")
    cost = pool.call_cost_percent
    assert cost is not None and 1.0 <= cost <= 10.0
    for call in calls:
        await call.hangup()
        await call.wait_ended(10)
    assert await uas.done(20) == 0, uas.explain()
