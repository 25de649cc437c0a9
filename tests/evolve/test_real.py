"""Integration: two real trials (core.train.fit) of 1 epoch at imgsz 64 on a tiny synthetic dataset."""
from __future__ import annotations

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from core.data.cache import clear_ram_cache, ram_cache_size
from core.hyp import load_hyp
from evolve.launcher import prepare_study
from evolve.report import write_outputs
from evolve.storage import make_storage
from evolve.study_config import load_study
from evolve.worker import run_worker
from tests.helpers import REPO

TINY = """path: shapes
train: images/train
val: images/val
names: {0: circle, 1: square, 2: triangle, 3: star, 4: cross, 5: ring}
synthetic: {seed: 0, n_train: 8, n_val: 4, imgsz: 64}
"""


def test_two_real_trials_train_and_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    (tmp_path / "tiny.yaml").write_text(TINY)
    cfg = load_study(REPO / "studies" / "quick.yaml",
                     {"name": "real", "data": "tiny.yaml", "imgsz": 64, "batch": 4, "epochs": 1, "trials": 2,
                      "workers": 1, "base": {}, "noise_seeds": 0})
    run_dir = tmp_path / "runs" / "evolve" / "real"
    prepare_study(cfg, None, run_dir)
    clear_ram_cache()
    logs: list[str] = []
    assert run_worker(cfg, run_dir, log=logs.append) == 2
    assert any("images decoded into the RAM cache" in m for m in logs)  # warmed before the first trial
    assert ram_cache_size()[0] == 12  # 8 train + 4 val images, decoded once for both trials
    study = optuna.load_study(study_name="real", storage=make_storage(None, run_dir))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    base_lr0 = load_hyp(cfg.resolved("hyp"))["lr0"]
    assert trials[0].params["lr0"] == base_lr0 and trials[1].params != trials[0].params  # base, then a mutant
    for t in trials:
        ua = t.user_attrs
        assert ua["epochs"] == 1 and ua["stop_reason"] == "completed" and 0.0 <= t.value <= 1.0
        assert all(0.0 <= ua[k] <= 1.0 for k in ("P", "R", "mAP50", "mAP50-95"))
        assert ua["val_box"] > 0 and ua["train_seconds"] > 0 and ua["seconds"] >= ua["train_seconds"]
        assert len(ua["data_sha256"]) == 64 and len(ua["model_sha256"]) == 64
        assert list(t.intermediate_values) == [1]
    paths = write_outputs(study, run_dir)
    assert len(pd.read_csv(paths["csv"])) == 2
    assert load_hyp(paths["best_hyp"])["fliplr"] == 0.5
