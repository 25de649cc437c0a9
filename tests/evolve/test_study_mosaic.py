"""AutoMosaic inside a study: one factor, from the base hyp, for every trial and retrain; the mosaic each run
trained with is what evolve.csv records (mosaic_used) and what the retrain uses."""
from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest

from core.hyp import load_hyp
from evolve.launcher import prepare_study
from evolve.report import write_outputs
from evolve.storage import make_storage
from evolve.study import retrain_options, retrain_plan, run_retrain
from evolve.study_config import load_study
from evolve.worker import run_worker
from tests.helpers import REPO, automosaic_on, fake_fit

QUICK = REPO / "studies" / "quick.yaml"
IMGSZ = 96
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _factor(data, hyp):
    return automosaic_on(data, hyp, IMGSZ).factor


def test_trials_and_retrains_train_with_the_base_hyps_automosaic_factor_and_record_it(medium_data, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_study(QUICK, {"name": "mosaic", "data": medium_data, "base": {}, "noise_seeds": 0, "trials": 4,
                             "epochs": 1, "imgsz": IMGSZ, "sampler": "random",
                             "retrain": {"epochs": 1, "top_k": 1, "seeds": 1, "base": True}})
    seen = []

    def recording_fit(data, model, hyp, opts, callbacks=None):
        seen.append((opts.name, dict(hyp), opts.automosaic))
        return fake_fit(data, model, hyp, opts, callbacks)

    run_dir = Path("runs/evolve/mosaic")
    prepare_study(cfg, None, run_dir)
    run_worker(cfg, run_dir, fit=recording_fit, log=lambda m: None)
    base = load_hyp(cfg.resolved("hyp"))
    factor = _factor(medium_data, base)
    assert 0.3 < factor < 0.7  # the data halves the base hyp's mosaic
    study = optuna.load_study(study_name=cfg.name, storage=make_storage(None, run_dir))
    write_outputs(study, run_dir, plots=False)
    df = pd.read_csv(run_dir / "evolve.csv").set_index("number")
    trials = study.get_trials()
    assert len(seen) == 4
    for name, hyp, automosaic in seen:
        t = trials[int(name)]
        gene = t.params.get("mosaic", base["mosaic"])
        assert automosaic is False and hyp["mosaic"] == pytest.approx(gene * factor)  # one factor for all
        assert t.user_attrs["mosaic_used"] == pytest.approx(hyp["mosaic"])
        assert df.loc[t.number, "mosaic_used"] == pytest.approx(hyp["mosaic"]) and df.loc[t.number, "mosaic"] == gene
    # the searched warp genes differ between trials: AutoMosaic per trial would have scaled each differently
    assert len({round(_factor(medium_data, hyp), 3) for _, hyp, _ in seen[1:]}) > 1

    # the retrain trains each hyp with the mosaic its trial used, AutoMosaic off
    plan = retrain_plan(run_dir / "evolve.csv", cfg, retrain_options(cfg))
    assert [p["mosaic"] for p in plan] == pytest.approx([df.loc[p["trial"], "mosaic_used"] for p in plan])
    seen.clear()
    run_retrain(cfg, plan, retrain_options(cfg), tmp_path / "retrain", "cpu", force=False, fit=recording_fit,
                parallel=False)
    assert [(h["mosaic"], a) for _, h, a in seen] == [(pytest.approx(p["mosaic"]), False) for p in plan]
    assert all(p["hyp"]["mosaic"] == df.loc[p["trial"], "mosaic"] for p in plan)  # best_hyp.yaml keeps the gene


def test_automosaic_off_in_the_study_trains_the_genes_as_drawn(medium_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_study(QUICK, {"name": "off", "data": medium_data, "base": {}, "noise_seeds": 0, "trials": 2,
                             "epochs": 1, "imgsz": IMGSZ, "sampler": "random",
                             "train": {**load_study(QUICK).train, "automosaic": False}})
    seen = []
    run_dir = Path("runs/evolve/off")
    prepare_study(cfg, None, run_dir)
    run_worker(cfg, run_dir, fit=lambda d, m, h, o, c=None: (seen.append((h["mosaic"], o.automosaic)),
                                                                fake_fit(d, m, h, o, c))[1], log=lambda m: None)
    trials = optuna.load_study(study_name=cfg.name, storage=make_storage(None, run_dir)).get_trials()
    base = load_hyp(cfg.resolved("hyp"))
    assert seen == [(t.params.get("mosaic", base["mosaic"]), False) for t in trials]
