"""How CPU training shares the cores between torch's threads and the loader workers.

Auto (`--threads 0`): the trainer takes every core and its loader workers run at the lowest priority
(nice 19), so they fill the gaps between the trainer's ops instead of taking a core from its OpenMP threads:
on 2 cores with 2 workers, 1.3x the images/s of leaving each worker a core (README, "Speed levers, third
pass: threads"). That holds only while nothing else runs: an OpenMP thread that waits for a core another
process holds stalls every op (2x slower beside one busy process). So auto takes every core only when the
CPU is idle at start (`training_threads`), and re-decides before every epoch from what other processes used
of the CPU during the last one (`AdaptiveThreads`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["cpu_cores", "ThreadPlan", "training_threads", "workers_yield"]

WORKER_NICE = 19     # loader workers' priority when the trainer's threads take every core
BUSY_CORES = 0.25    # CPU used by other processes (in cores) that makes all-core threads a bad bet (idle: ~0.01)


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fallback_threads(workers: int) -> int:
    """The cores the loader workers leave, at least 1: safe beside other busy processes."""
    return max(1, cpu_cores() - workers)


def all_threads() -> int:
    """Every core, but never more threads than torch already has: a caller's set_num_threads is a cap
    (the tests run on one thread), and torch's default counts physical cores, not hyperthreads."""
    return min(torch.get_num_threads(), cpu_cores())


@dataclass(frozen=True)
class ThreadPlan:
    threads: int                         # torch threads to start with
    why: str                             # for the log
    between: tuple[int, int] | None = None  # (low, top): auto re-decides every epoch from the other load


def training_threads(requested: int, workers: int, world_size: int = 1, sample_s: float = 0.25) -> ThreadPlan:
    """How many torch threads CPU training starts with. `requested` > 0 or OMP_NUM_THREADS win. Auto takes every
    core when other processes used less than BUSY_CORES during a `sample_s` look at the CPU, else the cores the
    loader workers leave; never more than torch's thread count (`all_threads`). DDP ranks on one
    CPU share its cores and would see each other as load: each gets its share minus its workers."""
    if requested > 0:
        return ThreadPlan(requested, "--threads")
    if os.environ.get("OMP_NUM_THREADS"):
        return ThreadPlan(torch.get_num_threads(), "OMP_NUM_THREADS")
    cores = cpu_cores()
    if world_size > 1:
        return ThreadPlan(min(torch.get_num_threads(), max(1, cores // world_size - workers)),
                          "this rank's share of the cores minus its loader workers")
    top, low = all_threads(), min(torch.get_num_threads(), fallback_threads(workers))
    if top == low:
        return ThreadPlan(top, "every core the loader workers leave")
    busy = busy_cores(sample_s)
    if busy is None:
        return ThreadPlan(low, "the cores the loader workers leave (CPU load unknown off Linux)")
    if busy >= BUSY_CORES:
        return ThreadPlan(low, f"the cores the loader workers leave: other processes are using {busy:.1f} cores",
                          (low, top))
    return ThreadPlan(top, "every core, loader workers at low priority: the CPU is idle", (low, top))


def workers_yield(plan: ThreadPlan, workers: int) -> bool:
    """Whether loader workers run at low priority: when they and the trainer's threads want more cores than
    there are (or may, once an adaptive plan takes every core), the trainer's OpenMP threads must not wait for
    a worker to give a core back."""
    return workers > 0 and (plan.between is not None or plan.threads + workers > cpu_cores())


class AdaptiveThreads:
    """Re-decides an adaptive plan once per epoch from what other processes used of the CPU since the last call:
    every core while they stay under BUSY_CORES, else the cores the loader workers leave."""

    def __init__(self, low: int, top: int):
        self.low, self.top = low, top
        self.load = OtherLoad()

    def update(self) -> str | None:
        """Set torch's thread count for the next epoch; a line for the log when it changes."""
        busy = self.load.cores()
        if busy is None:
            return None
        want = self.top if busy < BUSY_CORES else self.low
        have = torch.get_num_threads()
        if want == have:
            return None
        torch.set_num_threads(want)
        return f"torch threads {have} -> {want}: other processes used {busy:.1f} cores during the last epoch"


def lower_priority() -> None:
    """Called in a loader worker: nice it to WORKER_NICE (a process can always lower its own priority)."""
    os.nice(max(0, WORKER_NICE - os.nice(0)))


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot from /proc/stat; None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def _process_jiffies(pid: int | str) -> int:
    """CPU clock ticks of one process (all its threads) and of its reaped children; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime


def _own_jiffies() -> int:
    """CPU ticks of this process and its live children (the loader workers)."""
    me = os.getpid()
    total = _process_jiffies(me)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                total += _process_jiffies(entry.name)
    return total


def busy_cores(sample_s: float) -> float | None:
    """Cores other processes kept busy over the next `sample_s` seconds (this one sleeps); None off Linux."""
    load = OtherLoad()
    if not load.available:
        return None
    time.sleep(sample_s)
    return load.cores()


class OtherLoad:
    """CPU used by processes other than this one and its children since the last `cores()` call, in cores."""

    def __init__(self):
        self.available = _cpu_jiffies() is not None
        self._mark()

    def _mark(self) -> None:
        self._cpu = _cpu_jiffies() if self.available else None
        self._own = _own_jiffies() if self.available else 0

    def cores(self) -> float | None:
        if not self.available:
            return None
        (busy0, total0), own0 = self._cpu, self._own
        self._mark()
        (busy1, total1), own1 = self._cpu, self._own
        if total1 <= total0:
            return 0.0
        # Children that exited in between take their ticks with them: clamp at 0 rather than go negative.
        other = max(0, (busy1 - busy0) - (own1 - own0))
        return other / (total1 - total0) * (os.cpu_count() or 1)
