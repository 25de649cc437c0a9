"""What a resume or a retry does to the study's accounting: a retry of trial 0 is still the study seed's noise
trial, a late result beside its running retry is not counted twice, and resumed samplers draw new points."""
from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from core.hyp import load_hyp
from evolve.launcher import prepare_study
from evolve.ledger import claim_owner, count_finished, fail_and_retry, retry_history
from evolve.noise import noise_floor
from evolve.objective import Objective
from evolve.report import write_outputs
from evolve.space import load_space
from evolve.storage import make_storage
from evolve.worker import run_trial, run_worker
from tests.helpers import fake_fit

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(cfg, run_dir):
    return optuna.load_study(study_name=cfg.name, storage=make_storage(None, run_dir))


# ---- trial 0's retry ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["interrupted", "stale"])
def test_a_retry_of_trial_0_is_still_the_study_seeds_noise_trial(cfg_for, how):
    """Trial 0 is cut (Ctrl-C, or failed as stale by another worker) and re-run after a resume: its retry has
    another number, and the noise floor still holds three seeds, the retry standing for the study seed."""
    cfg = cfg_for(f"zero-{how}", trials=5, epochs=2, noise_seeds=3, workers=1)
    run_dir = Path(f"runs/evolve/{cfg.name}")
    prepare_study(cfg, None, run_dir)
    calls = []

    def cut_trial_0(data, model, hyp, opts, callbacks=None):
        calls.append(opts.seed)
        if len(calls) == 1:
            if how == "interrupted":
                raise KeyboardInterrupt("signal 15")
            study = _study(cfg, run_dir)  # another worker: trial 0's heartbeat looked late
            assert fail_and_retry(study, study.get_trials(states=(TrialState.RUNNING,))[0], "stale: no heartbeat", 2)
            raise RuntimeError("this worker was in fact dead")
        return fake_fit(data, model, hyp, opts, callbacks)

    if how == "interrupted":
        with pytest.raises(KeyboardInterrupt):
            run_worker(cfg, run_dir, fit=cut_trial_0, log=lambda m: None)
    run_worker(cfg, run_dir, fit=cut_trial_0, log=lambda m: None)  # resume (the stale case goes on by itself)
    study = _study(cfg, run_dir)
    trials = study.get_trials()
    retry = [t for t in trials if 0 in retry_history(t)]
    assert trials[0].state == TrialState.FAIL and len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].user_attrs["seed"] == cfg.seed and calls[0] == cfg.seed
    floor = noise_floor(trials)
    assert floor is not None and floor.n == 3 and sorted(floor.trials) == sorted([1, 2, retry[0].number])
    write_outputs(study, run_dir, plots=False)
    df = pd.read_csv(run_dir / "evolve.csv").set_index("number")
    assert bool(df.loc[retry[0].number, "noise"]) and df.noise.sum() == 4  # trial 0 (failed) + the 3 measured seeds
    assert count_finished(trials) == 5


# ---- a late result beside its running retry -------------------------------------------------------------------

def test_a_late_result_is_not_counted_beside_its_running_retry(cfg_for):
    """Noise trial 1 is failed as stale while its worker lives on; another worker already runs the retry when
    the late result arrives. The retry's result is the trial's: seed 101 is measured once, counted once."""
    cfg = cfg_for("late", trials=3, epochs=2, noise_seeds=2, workers=1)
    run_dir = Path("runs/evolve/late")
    prepare_study(cfg, None, run_dir)
    mine, other = _study(cfg, run_dir), _study(cfg, run_dir)
    taken = []

    def fit(data, model, hyp, opts, callbacks=None):
        if opts.name == "1" and not taken:  # meanwhile the other worker fails trial 1 and takes its retry
            assert fail_and_retry(other, other.get_trials(states=(TrialState.RUNNING,))[0], "stale: late beat", 2)
            taken.append(other.ask())
            claim_owner(other, taken[0]._trial_id, 1)
        return fake_fit(data, model, hyp, opts, callbacks)

    objective = Objective(cfg, load_space(cfg.resolved("space")), load_hyp(cfg.resolved("hyp")), run_dir, fit=fit)
    logs: list[str] = []
    for _ in range(2):  # trials 0 and 1 on this worker
        trial = mine.ask()
        claim_owner(mine, trial._trial_id, 0)
        run_trial(mine, trial, objective, cfg, 0, logs.append)
    retry = taken[0]
    assert retry_history(other._storage.get_trial(retry._trial_id)) == [1]
    run_trial(other, retry, objective, cfg, 1, logs.append)  # the retry finishes too
    trials = mine.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in complete] == [0, retry.number], [(t.number, t.state) for t in trials]
    assert count_finished(trials) == 2
    floor = noise_floor(trials)
    assert floor.n == 2 and floor.trials == [0, retry.number]
    assert any("not counted twice" in m for m in logs)


# ---- resumed samplers draw new points ---------------------------------------------------------------------------

def _sampled(cfg, run_dir):
    """Params of the trials the sampler drew (not the enqueued base hyp), in trial order."""
    return [tuple(sorted(t.params.items())) for t in _study(cfg, run_dir).get_trials()
            if "fixed_params" not in t.system_attrs and t.params]


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_a_resumed_worker_draws_new_points_and_a_fresh_study_repeats_its_own(cfg_for, sampler):
    """4 trials, then resumed to 8: the 4 new draws repeat none of the first (before, the resumed worker
    replayed its seed: the same 3 points again). A fresh study with the same settings draws the first run's
    points again, trial for trial."""
    runs = []
    for name in (f"resume-{sampler}", f"again-{sampler}"):
        cfg = cfg_for(name, trials=4, epochs=1, sampler=sampler, workers=1)
        run_dir = Path(f"runs/evolve/{name}")
        prepare_study(cfg, None, run_dir)
        run_worker(cfg, run_dir, fit=fake_fit, log=lambda m: None)
        runs.append((cfg, run_dir, _sampled(cfg, run_dir)))
    (cfg, run_dir, first), (_, _, fresh) = runs
    assert len(first) == 3 and fresh == first  # reproducible from a fresh start
    logs: list[str] = []
    resumed = cfg_for(cfg.name, trials=8, epochs=1, sampler=sampler, workers=1)
    run_worker(resumed, run_dir, fit=fake_fit, log=logs.append)
    after = _sampled(resumed, run_dir)
    assert after[:3] == first and len(after) == 7
    assert len(set(after)) == 7, "a resumed worker proposed a point it had already trained"
    assert any("resuming after 3 draw(s)" in m for m in logs)
