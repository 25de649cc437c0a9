"""Studies bounded by time (evolve/budget.py), on a fake clock with the fake fit."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

import evolve.budget as budget
import evolve.study as st
from evolve.__main__ import main as evolve_main
from evolve.launcher import launch, prepare_study
from evolve.ledger import count_finished
from evolve.storage import make_storage
from evolve.study_config import StudyError, load_study
from evolve.worker import run_worker
from tests.evolve.test_study_report import Fakes
from tests.helpers import FAKE_FIT, fake_fit


class Clock:
    """evolve.budget's clock, moved by hand (starting at the real time, so subprocess workers agree)."""

    def __init__(self, monkeypatch, start: float | None = None):
        self.t = time.time() if start is None else start
        monkeypatch.setattr(budget, "now", lambda: self.t)

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _study(cfg, run_dir):
    return optuna.load_study(study_name=cfg.name, storage=make_storage(None, Path(run_dir)))


def test_timeout_and_budget_fields():
    assert budget.parse_timeout("90") == 90 and budget.parse_timeout("90m") == 5400
    assert budget.parse_timeout("1.5h") == 5400 and budget.parse_timeout("30s") == 30
    for bad in ("soon", "-1", "0h"):
        with pytest.raises(ValueError, match="timeout"):
            budget.parse_timeout(bad)
    assert load_study(None, {"budget": {"hours": 2}}).budget == {"hours": 2}
    for bad, msg in (({"hour": 2}, "unknown option.*hour"), ({"hours": 0}, "budget.hours"),
                     ({"hours": 1, "evolve": 1.5}, "budget.evolve"), ({"evolve": 0.5}, "needs hours")):
        with pytest.raises(StudyError, match=msg):
            load_study(None, {"budget": bad})


def test_no_trial_starts_after_the_deadline_running_ones_finish(cfg_for, monkeypatch):
    clock = Clock(monkeypatch, start=1_000_000.0)
    cfg = cfg_for("timed", trials=20, epochs=3, budget={"hours": 1})
    run_dir = Path("runs/evolve/timed")
    study = prepare_study(cfg, None, run_dir)
    deadline = budget.study_deadline(cfg.budget, study.user_attrs, study.set_user_attr)
    assert deadline.at == 1_000_000.0 + 3600
    assert _study(cfg, run_dir).user_attrs["budget_start"] == 1_000_000.0  # in the storage: every machine's

    def trial_of_20_minutes(data, model, hyp, opts, callbacks=None):
        clock.advance(1200)  # each trial takes 20 (fake) minutes, and is trained to its end
        return fake_fit(data, model, hyp, opts, callbacks)

    ran = run_worker(cfg, run_dir, fit=trial_of_20_minutes, log=lambda m: None, deadline=deadline.at)
    # trials start at 0, 20 and 40 minutes; the one started at 40 ends at 60 past the deadline; none starts at 60
    trials = _study(cfg, run_dir).get_trials()
    assert ran == 3 and count_finished(trials) == 3
    assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 3 for t in trials)


def test_resume_after_the_deadline_starts_nothing_unless_raised(cfg_for, monkeypatch, caplog):
    clock = Clock(monkeypatch)
    cfg = cfg_for("late", trials=3, epochs=2, workers=1, budget={"hours": 1})
    run_dir = Path("runs/evolve/late")
    study = prepare_study(cfg, None, run_dir)
    budget.study_deadline(cfg.budget, study.user_attrs, study.set_user_attr)  # the clock starts now
    clock.advance(2 * 3600)
    with caplog.at_level(logging.WARNING):
        assert launch(cfg, fit_spec=FAKE_FIT, poll=0.2) == 0
    assert "has passed with 0/3 trials finished: nothing started" in caplog.text
    assert not list(run_dir.glob("worker_*.log")) and count_finished(_study(cfg, run_dir).get_trials()) == 0
    # a larger budget moves the deadline past now (the workers read the real clock, as the fake one started)
    assert launch(cfg_for("late", trials=3, epochs=2, workers=1, budget={"hours": 3}), fit_spec=FAKE_FIT, poll=0.2) == 0
    assert count_finished(_study(cfg, run_dir).get_trials()) == 3


def test_timeout_flag_bounds_the_command(cfg_for, caplog):
    cfg_for("flag")  # writes data.yaml
    with caplog.at_level(logging.WARNING):
        code = evolve_main(["--study", "studies/quick.yaml", "--name", "flag", "--data", "data.yaml", "--fit",
                            FAKE_FIT, "--timeout", "0.001", "--trials", "4"])
    # the quick study's base run is trained first (fake fit); by then the timeout has passed
    assert code == 0 and "nothing started" in caplog.text


def test_study_phases_share_the_budget(tmp_path, monkeypatch):
    """Evolution gets its share; the retrain keeps the seeds that fit in what is left; prune needs time left."""
    clock = Clock(monkeypatch, start=5_000_000.0)
    fakes = Fakes()
    launches = []

    def launch_30_minutes(cfg, storage, run_dir, deadline=None):
        launches.append(deadline)
        code = fakes.launch(cfg, storage, run_dir)
        clock.advance(1800)
        return code

    def fit_20_minutes(data, model, hyp, opts):
        clock.advance(1200)
        return fakes.fit(data, model, hyp, opts)

    cfg = load_study(None, {"name": "fake", "budget": {"hours": 1.5, "evolve": 0.4},
                            "retrain": {"epochs": 2, "top_k": 1, "seeds": 3, "base": True}})
    monkeypatch.setattr(budget, "epoch_seconds", lambda csv: 600.0)  # 2 epochs: a 20-minute retrain run
    code = st.run_study(cfg, tmp_path / "study" / "fake", tmp_path / "evolve" / "fake", threads=1,
                        launch_fn=launch_30_minutes, fit=fit_20_minutes, prune_fn=fakes.prune)
    assert code == 0
    assert launches[0].at == 5_000_000.0 + 0.4 * 1.5 * 3600  # evolution: 36 of the 90 minutes
    # 60 minutes left after evolution's 30: 3 runs of 20 fit, 2 hyps x 1 seed (pairs stay paired)
    assert [f[0] for f in fakes.fits] == ["trial2_seed1", "trial0_seed1"]
    assert len(fakes.prunes) == 1  # 20 minutes were left: the prune ran
    retrain = pd.read_csv(tmp_path / "study" / "fake" / "retrain" / "retrain.csv")
    assert retrain.seed.tolist() == [1, 1]

    # the same study resumed after its deadline: nothing new runs, the report is still written
    clock.advance(3600)
    fits = len(fakes.fits)
    cfg2 = load_study(None, {"name": "fake", "budget": {"hours": 1.5, "evolve": 0.4},
                             "retrain": {"epochs": 2, "top_k": 2, "seeds": 3, "base": True}})
    assert st.run_study(cfg2, tmp_path / "study" / "fake", tmp_path / "evolve" / "fake", threads=1,
                        launch_fn=launch_30_minutes, fit=fit_20_minutes, prune_fn=fakes.prune) == 0
    assert len(fakes.fits) == fits and (tmp_path / "study" / "fake" / "report.html").is_file()


def test_trim_retrain_keeps_pairs():
    plan = [{"trial": t, "seed": s} for t in (2, 0) for s in (1, 2, 3)]
    assert budget.trim_retrain(plan, 3600, 600, 1) == plan                        # 6 runs fit
    assert budget.trim_retrain(plan, 2500, 600, 1) == [plan[0], plan[1], plan[3], plan[4]]  # 4 fit: 2 seeds each
    assert budget.trim_retrain(plan, 700, 600, 1) == [plan[0]]                    # 1 fits: the best's first seed
    assert budget.trim_retrain(plan, 100, 600, 2) == [plan[0]]                    # time left: the best's first seed
    assert budget.trim_retrain(plan, -1, 600, 2) == []                            # none left
    assert budget.trim_retrain(plan, 700, float("nan"), 1) == plan                # no estimate: everything
