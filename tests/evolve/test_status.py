"""`python -m evolve status NAME` and the launcher's status line, from the storage alone (fake fit)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import evolve.budget as budget
from evolve.__main__ import main as evolve_main
from evolve.launcher import prepare_study
from evolve.noise import noise_floor
from evolve.status import format_status, status_line, study_status
from evolve.storage import make_storage
from evolve.worker import run_worker
from tests.helpers import fake_fit


def _study(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(None, Path("runs/evolve") / name))


@pytest.fixture
def half_done(cfg_for):
    """A study of 8 trials (3 noise seeds) of which a worker ran 5."""
    cfg = cfg_for("stat", trials=8, epochs=2, noise_seeds=3)
    run_dir = Path("runs/evolve/stat")
    prepare_study(cfg, None, run_dir)
    run_worker(cfg_for("stat", trials=5, epochs=2, noise_seeds=3), run_dir, fit=fake_fit, log=lambda m: None)
    return cfg


def test_status_numbers(half_done):
    study = _study("stat")
    s = study_status(study)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    floor = noise_floor(trials)
    assert (s.done, s.total, s.running, s.failed) == (5, 8, 0, 0)
    assert s.best_number == best.number and s.best_value == best.value
    assert s.best_gain_sd == pytest.approx(floor.gain_sd(best.value)) and math.isfinite(s.best_gain_sd)
    assert s.floor.n == 3 and s.searched == 2
    median = statistics.median(t.user_attrs["seconds"] for t in complete)
    assert s.parallel == 1 and s.eta_s == pytest.approx(3 * median)  # 3 trials left, one worker
    text = format_status(s)
    assert "5/8 trials finished (0 running, 0 pruned, 0 failed)" in text
    assert f"best so far: trial {best.number}, fitness {best.value:.4f} ({s.best_gain_sd:+.1f} sd" in text
    assert f"noise floor: base hyp {floor.mean:.4f} ± {floor.sd:.4f} (sd over 3 seeds)" in text
    assert "ETA: 0:00:0" in text and "1 worker(s) at once" in text


def test_status_command_while_a_trial_runs(half_done, capsys):
    """The command opens the storage afresh (as from another machine) and sees the running trial."""
    running = _study("stat").ask()  # a worker elsewhere has claimed a trial
    running.set_user_attr("worker", 1)
    assert evolve_main(["status", "stat"]) == 0
    out = capsys.readouterr().out
    assert "study 'stat': 5/8 trials finished (1 running" in out and "2 worker(s) at once" in out
    assert evolve_main(["status", "nowhere"]) == 2


def test_status_with_a_budget(cfg_for, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(budget, "now", lambda: clock[0])
    cfg = cfg_for("tight", trials=6, epochs=2, budget={"hours": 1})
    study = prepare_study(cfg, None, Path("runs/evolve/tight"))
    budget.study_deadline(cfg.budget, study.user_attrs, study.set_user_attr)
    for seconds in (1500.0, 1500.0):  # two trials of 25 minutes each: 4 left need 100 minutes
        t = study.ask()
        t.set_user_attr("seconds", seconds)
        study.tell(t, 0.1)
    clock[0] += 3000
    s = study_status(_study("tight"))
    assert s.eta_s == pytest.approx(4 * 1500) and s.eta_capped and s.deadline.left() == pytest.approx(600)
    assert "the deadline" in format_status(s) and status_line(s).endswith("(deadline first)")
