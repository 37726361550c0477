"""Admission control: refuse new calls while the machine's CPU is nearly full.

Audio has no slack. When the cores are full, every call's frames arrive late at once, and
the bench showed loss jump from under 1 % to about half the frames between 60 and 72 calls on
two cores. So a call the machine cannot carry must be refused, not let in to spoil every call
in progress. This is FreeSWITCH's ``min-idle-cpu`` idea:

* :class:`CpuIdle` reads the machine's free CPU time from ``/proc/stat`` once a second and
  averages it over the last few seconds (a short burst from another process is not overload);
* :class:`Admission` refuses a call when the free share, less what the calls not yet seen in
  that average will cost, is below ``sip.min_idle_cpu``. A ringing call is not seen at all
  (its media has not started); an answered one is seen in proportion to how much of the
  window has passed since it was answered (:func:`unseen_share`). That keeps a burst of calls
  from all being let in on the same reading.

The window (:data:`WINDOW_S`) is a compromise: long enough that the CPU spent setting calls
up (DTLS handshakes, the homeserver's events) in a burst does not read as the load the calls
will keep, short enough that a machine that really fills up is seen within seconds.

Under a CPU quota (cgroup v2 ``cpu.max``: a container's ``--cpus``, a systemd service's
``CPUQuota=``, or one on a slice above the service), ``/proc/stat`` still shows the whole
host; the tightest quota from the bridge's own cgroup up to the root is found
(:func:`tightest_cgroup_quota`), its free share (from that cgroup's ``cpu.stat``) is read too,
and the lower one counts (:class:`LeastIdle`), with a call's cost taken against the quota's
cores.

What a call costs is learned on the machine itself (:class:`CallCost`): once a second the
pool reads the CPU time of each worker that holds answered calls (``/proc/PID/stat``), and
over the window that CPU per call becomes the reserve for calls not yet seen (smoothed, held
to 1-10 % of a core; 2 % until at least two calls have been up for a whole window). A
machine twice as slow reserves twice as much, where a constant would let a burst in that
the machine cannot carry.

The pool asks before it places an outbound call (refused: :class:`Overloaded`) and before it
hands an inbound INVITE on (refused: 503, so a dispatcher in front can try another bridge).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from . import procstat

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP = Path("/sys/fs/cgroup")
#: what one G.711 call costs, in % of one core, until it is learned (bench/calls.py on two
#: cores: 1.5-3 % depending on the machine).
CALL_COST_PCT = 2.0
#: the range a learned cost is held to, in % of one core.
CALL_COST_RANGE = (1.0, 10.0)
#: answered calls that must be up through a whole window before their cost is learned.
LEARN_MIN_CALLS = 2
#: weight of a new window's cost in the smoothed one.
LEARN_WEIGHT = 0.3
#: seconds of samples the free share is averaged over.
WINDOW_S = 5


def read_cpu_times(path: Path = PROC_STAT) -> tuple[int, int]:
    """(free, total) clock ticks of all CPUs since boot, from the ``cpu`` line.

    Free is idle and iowait, and nice: time of niced processes (a backup job) is there for
    the calls to take, since the bridge runs at normal priority and the scheduler gives it
    almost all of a core before a nice-19 process."""
    with path.open("rb") as f:
        fields = f.readline().split()
    if len(fields) < 6 or fields[0] != b"cpu":
        raise ValueError(f"{path}: no 'cpu' line first")
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    ticks = [int(v) for v in fields[1:9]]
    return ticks[1] + ticks[3] + ticks[4], sum(ticks)


def cgroup_quota_cores(root: Path = CGROUP) -> float | None:
    """The CPU quota one cgroup v2 directory sets (its ``cpu.max``), in cores; None when
    there is none or it cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        cores = int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None  # no file (no cgroup v2, or not in a container), or "max": no quota
    return cores if cores > 0 else None


def own_cgroup(root: Path = CGROUP, self_cgroup: Path = PROC_SELF_CGROUP) -> Path:
    """This process's cgroup v2 directory (the ``0::PATH`` line of ``/proc/self/cgroup``);
    ``root`` when that cannot be read (inside a container's cgroup namespace it is ``/``)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return root
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            return root.joinpath(*[p for p in path.split("/") if p not in ("", ".", "..")])
    return root


def tightest_cgroup_quota(root: Path = CGROUP, self_cgroup: Path = PROC_SELF_CGROUP
                          ) -> tuple[float, Path] | None:
    """The smallest CPU quota (in cores) on the way from our cgroup up to the root, and the
    cgroup that sets it: a container's own quota (``docker run --cpus``), a systemd
    service's ``CPUQuota=``, or one on a slice above it. None when there is none."""
    tightest: tuple[float, Path] | None = None
    cgroup = own_cgroup(root, self_cgroup)
    while True:
        cores = cgroup_quota_cores(cgroup)
        if cores is not None and (tightest is None or cores < tightest[0]):
            tightest = (cores, cgroup)
        if cgroup == root or root not in cgroup.parents:
            return tightest
        cgroup = cgroup.parent


def cgroup_times_reader(cores: float, root: Path = CGROUP,
                        clock: Callable[[], int] = time.monotonic_ns
                        ) -> Callable[[], tuple[int, int]]:
    """A reader of (free, total) microseconds of the quota: ``cores`` times the time that
    passed, less what the cgroup used (``cpu.stat`` usage_usec)."""
    stat = root / "cpu.stat"

    def read() -> tuple[int, int]:
        with stat.open() as f:
            usage = next((int(value) for key, _, value in (line.partition(" ") for line in f)
                          if key == "usage_usec"), None)
        if usage is None:
            raise ValueError(f"{stat}: no usage_usec")
        total = int(clock() // 1000 * cores)
        return total - usage, total

    return read


def unseen_share(answered_at: float | None, now: float, window_s: float = WINDOW_S) -> float:
    """How much of one call's cost the CPU average does not show yet: all of it while the
    call rings, then less as the window fills with its answered time."""
    if answered_at is None:
        return 1.0
    return min(1.0, max(0.0, 1.0 - (now - answered_at) / window_s))


class CpuIdle:
    """Idle share of all CPUs over the last ``window`` samples."""

    def __init__(self, window: int = WINDOW_S,
                 read: Callable[[], tuple[int, int]] = read_cpu_times) -> None:
        self._read = read
        self._samples: deque[tuple[int, int]] = deque(maxlen=window + 1)

    def sample(self) -> None:
        self._samples.append(self._read())

    @property
    def percent(self) -> float | None:
        """None until two samples are in (or no time passed between them)."""
        if len(self._samples) < 2:
            return None
        (idle0, total0), (idle1, total1) = self._samples[0], self._samples[-1]
        if total1 <= total0:
            return None
        return 100.0 * (idle1 - idle0) / (total1 - total0)


class IdleGauge(Protocol):
    def sample(self) -> None: ...

    @property
    def percent(self) -> float | None: ...


class LeastIdle:
    """The lowest free share of several gauges: the host's, and a container's quota."""

    def __init__(self, *gauges: IdleGauge) -> None:
        self.gauges = gauges

    def sample(self) -> None:
        for gauge in self.gauges:
            gauge.sample()

    @property
    def percent(self) -> float | None:
        values = [p for p in (g.percent for g in self.gauges) if p is not None]
        return min(values) if values else None


def read_process_cpu(pid: int, proc: Path = procstat.PROC) -> float:
    """CPU seconds (user and system) one process has used so far."""
    return procstat.cpu_seconds(procstat.stat_fields(pid, proc=proc))


class CallCost:
    """What one answered call costs, in % of one core, learned from the CPU time of the
    workers that hold calls (see the module docstring)."""

    def __init__(self, window: int = WINDOW_S, default_pct: float = CALL_COST_PCT,
                 read: Callable[[int], float] = read_process_cpu) -> None:
        self.pct = default_pct
        self.learned = False
        self._read = read
        #: (time, {pid: (CPU seconds, answered calls)}) per sample
        self._samples: deque[tuple[float, dict[int, tuple[float, int]]]] = deque(
            maxlen=window + 1)

    def observe(self, now: float, calls_by_pid: Mapping[int, int]) -> None:
        """One sample: the answered calls of each worker process (once a second)."""
        sample: dict[int, tuple[float, int]] = {}
        for pid, calls in calls_by_pid.items():
            try:
                sample[pid] = (self._read(pid), calls)
            except (OSError, ValueError):
                continue  # the worker ended meanwhile
        self._samples.append((now, sample))
        if len(self._samples) == self._samples.maxlen:
            self._learn()

    def _learn(self) -> None:
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        spent = 0.0
        call_seconds = 0.0
        fewest = 0
        for pid, (cpu1, _) in last.items():
            counts = [s[pid][1] if pid in s else 0 for _, s in self._samples]
            if pid not in first or min(counts) < 1:
                continue  # a worker without calls all through the window: not the calls' CPU
            spent += max(0.0, cpu1 - first[pid][0])
            call_seconds += sum(counts[1:]) / (len(counts) - 1) * (t1 - t0)
            fewest += min(counts)
        if fewest < LEARN_MIN_CALLS or call_seconds <= 0:
            return
        low, high = CALL_COST_RANGE
        pct = min(high, max(low, 100.0 * spent / call_seconds))
        changed = not self.learned or abs(pct - self.pct) > 0.5 * self.pct
        self.pct = pct if not self.learned else (1 - LEARN_WEIGHT) * self.pct + LEARN_WEIGHT * pct
        if changed:
            log.info("admission control: a call costs %.1f %% of a core here (%d calls "
                     "measured over %.0f s)", self.pct, fewest, t1 - t0)
        self.learned = True


class Admission:
    """Whether the machine can carry one more call."""

    def __init__(self, min_idle_pct: float, cpu_count: float, idle: IdleGauge,
                 cost: CallCost | None = None) -> None:
        self.min_idle_pct = min_idle_pct
        self.idle = idle
        self.cost = cost if cost is not None else CallCost()
        self.cores = max(1.0, cpu_count)

    @property
    def call_share_pct(self) -> float:
        """One call's cost as a share of the whole machine (or quota), in %."""
        return self.cost.pct / self.cores

    def refusal(self, unseen: float) -> str | None:
        """Why a new call must be refused, or None to let it in. ``unseen``: how many calls'
        cost the CPU average does not show yet (the sum of :func:`unseen_share`)."""
        if self.min_idle_pct <= 0:
            return None
        idle = self.idle.percent
        if idle is None:
            return None
        left = idle - unseen * self.call_share_pct
        if left >= self.min_idle_pct:
            return None
        pending = f", {unseen:.1f} call(s) not yet in that" if unseen >= 0.05 else ""
        return (f"the bridge is overloaded: CPU {idle:.0f} % idle{pending}; "
                f"sip.min_idle_cpu is {self.min_idle_pct:g} %")
