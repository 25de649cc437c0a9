"""How CPU training shares the cores (core/cpu.py): the auto thread rule, the load it reads, niced workers."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import core.cpu as cpu
import core.train
from core.callbacks import Callbacks
from core.data.config import load_data_config
from core.data.loader import create_dataloader
from core.train import TrainOptions, fit
from tests.helpers import MODEL

BUSY = "import time\nt = time.time()\nwhile time.time() - t < 20: pass\n"


@pytest.fixture
def four_cores(monkeypatch):
    """A 4-core machine whose torch starts with 4 threads; torch's real count is restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(cpu, "cpu_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _children() -> list[int]:
    me, kids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    kids.append(int(entry.name))
            except (OSError, ValueError):
                pass
    return kids


def test_auto_takes_every_core_on_an_idle_cpu_and_leaves_the_workers_theirs_on_a_busy_one(four_cores, monkeypatch):
    monkeypatch.setattr(cpu, "busy_cores", lambda s: 0.1)
    plan = cpu.training_threads(0, workers=2)
    assert (plan.threads, plan.between) == (4, (2, 4)) and cpu.workers_yield(plan, 2)
    monkeypatch.setattr(cpu, "busy_cores", lambda s: 1.0)
    plan = cpu.training_threads(0, workers=2)
    assert (plan.threads, plan.between) == (2, (2, 4)) and "1.0 cores" in plan.why
    assert cpu.workers_yield(plan, 2)  # the plan may take every core at a later epoch
    monkeypatch.setattr(cpu, "busy_cores", lambda s: None)  # no /proc: the safe rule, fixed
    plan = cpu.training_threads(0, workers=2)
    assert (plan.threads, plan.between) == (2, None) and not cpu.workers_yield(plan, 2)


def test_explicit_threads_ddp_ranks_and_a_callers_cap_are_not_adapted(four_cores, monkeypatch):
    monkeypatch.setattr(cpu, "busy_cores", lambda s: pytest.fail("no load sample needed"))
    assert cpu.training_threads(3, workers=2) == cpu.ThreadPlan(3, "--threads")
    assert not cpu.workers_yield(cpu.ThreadPlan(2, "--threads"), 2)  # 2 + 2 workers fit 4 cores
    assert cpu.workers_yield(cpu.ThreadPlan(3, "--threads"), 2)      # 3 + 2 do not
    assert cpu.training_threads(0, workers=1, world_size=2).threads == 1  # 4 cores / 2 ranks - 1 worker
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    assert cpu.training_threads(0, workers=2) == cpu.ThreadPlan(3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(1)  # a caller that set one thread (as these tests do) keeps one
    plan = cpu.training_threads(0, workers=2)
    assert plan.threads == 1 and plan.between is None and not cpu.workers_yield(plan, 2)


def test_adaptive_threads_follow_the_other_load_each_epoch(four_cores, monkeypatch):
    adaptive = cpu.AdaptiveThreads(low=2, top=4)
    loads = iter([1.3, 1.2, 0.0])
    monkeypatch.setattr(adaptive.load, "cores", lambda: next(loads))
    assert adaptive.update() == "torch threads 4 -> 2: other processes used 1.3 cores during the last epoch"
    assert torch.get_num_threads() == 2
    assert adaptive.update() is None and torch.get_num_threads() == 2
    assert adaptive.update().startswith("torch threads 2 -> 4") and torch.get_num_threads() == 4


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc (Linux)")
def test_other_load_counts_other_processes_and_not_our_children():
    """Real processes, judged by their clock ticks rather than by the host's load: beside a training (a busy or
    saturated host) busy_cores reads about the same whether or not it counts one more spinning process, and a
    threshold on it fails (it did: 1.3 cores with two trainings beside the suite)."""
    child = subprocess.Popen([sys.executable, "-c", BUSY])  # a busy child of ours (a loader worker, say)
    # the same loop in a process that is not ours (reparented to init when its shell exits)
    out = subprocess.run(["sh", "-c", f'{sys.executable} -c "{BUSY}" >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True)
    other = int(out.stdout.strip())
    try:
        time.sleep(0.3)  # past their interpreters' start
        own0, kid0, other0 = cpu._own_jiffies(), cpu._process_jiffies(child.pid), cpu._process_jiffies(other)
        time.sleep(1.0)
        own1, kid1, other1 = cpu._own_jiffies(), cpu._process_jiffies(child.pid), cpu._process_jiffies(other)
    finally:
        child.kill()
        child.wait()
        os.kill(other, 9)
    assert kid1 > kid0 and other1 > other0  # both ran
    # the child's ticks are ours (OtherLoad subtracts them; 2 ticks: the reads are not simultaneous) ...
    assert own1 - own0 >= kid1 - kid0 - 2
    # ... the other process's are not: ours grew by the child's and this sleeping process's few ticks only
    assert (own1 - own0) - (kid1 - kid0) < other1 - other0


def test_other_load_is_the_busy_ticks_not_ours_in_cores(monkeypatch):
    """Between two looks, 200 of 1200 - 1000 = 200 ticks busy, 50 of them ours: 150 / 200 of 4 cores = 3.0."""
    ticks = iter([(0, 0), (100, 1000), (300, 1200)])  # OtherLoad reads once to see /proc/stat, then marks
    owns = iter([10, 60])
    monkeypatch.setattr(cpu, "_cpu_jiffies", lambda: next(ticks))
    monkeypatch.setattr(cpu, "_own_jiffies", lambda: next(owns))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert cpu.OtherLoad().cores() == pytest.approx(3.0)


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc (Linux)")
def test_loader_workers_run_niced_only_when_asked(tiny_data):
    train = load_data_config(tiny_data)["train"]
    for low, want in ((False, os.nice(0)), (True, cpu.WORKER_NICE)):
        loader, _ = create_dataloader(train, 64, 4, None, augment=False, workers=1, low_priority=low)
        next(iter(loader))
        (worker,) = loader._iterator._workers
        assert _nice(worker.pid) == want
        loader._iterator._shutdown_workers()
    assert os.nice(0) != cpu.WORKER_NICE  # the trainer itself keeps its priority


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc (Linux)")
def test_fit_nices_its_workers_when_its_threads_take_every_core(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(core.train, "training_threads", lambda *a: cpu.ThreadPlan(1, "test", (1, 1)))
    seen = []
    cb = Callbacks(on_train_start=lambda net: seen.extend(_nice(pid) for pid in _children()))
    before = torch.get_num_threads()
    try:
        fit(tiny_data, MODEL, None, TrainOptions(epochs=1, batch_size=8, imgsz=64, workers=1, save=False,
                                                               progress=False, project=str(tmp_path)), cb)
    finally:
        torch.set_num_threads(before)
    assert seen == [cpu.WORKER_NICE]
