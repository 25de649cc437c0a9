"""The GPU scheduling policy (evolve/devices.py), exercised on CPU with a fake GPU list: evolution
workers and retrain runs each get their own GPU (several per GPU with workers_per_gpu), masked with
CUDA_VISIBLE_DEVICES, and run in parallel. The fits only record what they were given."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

import evolve.devices as devices
import evolve.launcher as launcher
from core.hyp import load_hyp
from evolve.devices import Slot, device_slots
from evolve.storage import make_storage
from evolve.study import retrain_options, run_retrain
from evolve.study_config import load_study
from tests.helpers import REPO, fake_fit

QUICK = REPO / "studies" / "quick.yaml"


def fit_recording_gpu(data, model, hyp, opts, callbacks=None):
    """fake_fit that also writes which GPU mask, device and process it ran with (GPU_LOG dir), then waits
    (at most 60 s) until GPU_SLOTS distinct processes have started a run: only a parallel scheduler gets
    past this barrier quickly, and every slot is sure to take part however slowly its process started."""
    log_dir = Path(os.environ["GPU_LOG"])
    (log_dir / f"{os.getpid()}-{time.time_ns()}.json").write_text(json.dumps(
        {"mask": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": opts.device, "pid": os.getpid()}))
    deadline = time.time() + 60
    while len({r["pid"] for r in _records(log_dir)}) < int(os.environ["GPU_SLOTS"]) and time.time() < deadline:
        time.sleep(0.05)
    return fake_fit(data, model, hyp, opts, callbacks)


def _records(log_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(log_dir.glob("*.json"))]


def test_slots_on_cpu_and_on_a_masked_gpu_list(monkeypatch):
    monkeypatch.setattr(devices, "cpu_cores", lambda: 16)
    assert device_slots(load_study(QUICK, {"workers": 4})) == [Slot("cpu", "cpu", 4)] * 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # e.g. SLURM's allocation: ids index into it
    slots = device_slots(load_study(QUICK, {"gpus": "0,2", "workers_per_gpu": 2}))
    assert [(s.device, s.label, s.env["CUDA_VISIBLE_DEVICES"], s.threads) for s in slots] == [
        ("0", "cuda:4", "4", 4), ("0", "cuda:4", "4", 4), ("0", "cuda:7", "7", 4), ("0", "cuda:7", "7", 4)]
    with pytest.raises(Exception, match="outside CUDA_VISIBLE_DEVICES"):
        device_slots(load_study(QUICK, {"gpus": "3"}))


def test_evolution_runs_one_worker_per_gpu_slot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("GPU_LOG", str(tmp_path))
    monkeypatch.setenv("GPU_SLOTS", "4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.setattr(launcher, "preflight", lambda *a: None)  # no CUDA here: the GPU check would refuse
    data = tmp_path / "data.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
    cfg = load_study(QUICK, {"name": "gpus", "data": str(data), "base": {}, "noise_seeds": 0, "trials": 8,
                             "epochs": 2, "gpus": "0,1", "workers_per_gpu": 2})
    t0 = time.time()
    assert launcher.launch(cfg, fit_spec="tests.evolve.test_devices:fit_recording_gpu", poll=0.2) == 0
    assert time.time() - t0 < 50                                                # the 4 workers ran together
    trials = optuna.load_study(study_name="gpus", storage=make_storage(None, "runs/evolve/gpus")).get_trials()
    assert len(trials) == 8
    assert {t.user_attrs["device"] for t in trials} == {"cuda:5", "cuda:7"}
    assert {t.user_attrs["worker"] for t in trials} == {0, 1, 2, 3}           # 2 processes per GPU
    runs = _records(tmp_path)
    assert {r["mask"] for r in runs} == {"5", "7"} and {r["device"] for r in runs} == {"0"}
    assert len({r["pid"] for r in runs}) == 4


def test_retrain_runs_spread_over_the_gpus_in_parallel(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_LOG", str(tmp_path))
    monkeypatch.setenv("GPU_SLOTS", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    cfg = load_study(QUICK, {"gpus": "0,1", "base": {}, "noise_seeds": 0,
                             "retrain": {"epochs": 2, "top_k": 1, "seeds": 2}})
    plan = [{"trial": t, "role": r, "seed": s, "name": f"trial{t}_seed{s}", "hyp": load_hyp(None), "trial_fitness": 0.1}
            for t, r in ((4, "best"), (0, "base")) for s in (1, 2)]
    t0 = time.time()
    csv = run_retrain(cfg, plan, retrain_options(cfg), tmp_path / "out", "0", force=False, fit=fit_recording_gpu)
    assert time.time() - t0 < 50                          # past the barrier: the two GPUs' runs overlapped
    assert pd.read_csv(csv).run.tolist() == [p["name"] for p in plan]
    runs = _records(tmp_path)
    assert len(runs) == 4 and {r["mask"] for r in runs} == {"2", "3"} and {r["device"] for r in runs} == {"0"}
    pids = {r["mask"]: set() for r in runs}
    for r in runs:
        pids[r["mask"]].add(r["pid"])
    assert all(len(p) == 1 for p in pids.values())       # each GPU's process keeps its GPU for its life
