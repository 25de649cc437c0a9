"""A study SIGKILLed at seeded moments in every phase and run again until done ends as the uninterrupted study
ends (bench/crash_resume.py: the harness, and the stress run with real trainings); and the two bugs it found,
each in a direct test: a trial whose worker died took a new number (the GA seeds its draws by trial number:
every later trial differed), and a study cut while enqueueing its noise seeds never enqueued the rest."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna

from bench import crash_resume as cr
from evolve.launcher import noise_trial_attrs, prepare_study
from evolve.ledger import count_finished
from evolve.noise import NOISE_ATTR
from evolve.space import base_params, load_space
from evolve.storage import make_storage
from evolve.worker import run_worker
from core.hyp import load_hyp
from tests.helpers import fake_fit, run_crash_bench

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trials(cfg, run_dir):
    trials = optuna.load_study(study_name=cfg.name, storage=make_storage(None, run_dir)).get_trials()
    return [(t.number, t.state.name, t.params, t.value) for t in trials]


def _killed_at(number: int):
    """fake_fit, but the process dies by SIGKILL in trial `number`'s first epoch (no cleanup, no tell)."""
    def fit(data, model, hyp, opts, callbacks=None):
        if opts.name == str(number):
            os.kill(os.getpid(), signal.SIGKILL)
        return fake_fit(data, model, hyp, opts, callbacks)
    return fit


def test_a_trial_whose_worker_died_is_run_again_under_its_own_number(cfg_for):
    """The worker is killed in trial 4; the next worker takes trial 4 over (same number, params, seed) and the
    study ends with the uninterrupted study's trials, number for number. Before: trial 4 failed as stale, its
    retry became trial 5 and the GA drew trial 6 from another seed, so the last searched trials differed."""
    runs = {}
    for name in ("whole", "killed"):
        cfg = cfg_for(name, trials=7, epochs=2, noise_seeds=2, workers=1)
        run_dir = Path(f"runs/evolve/{name}")
        prepare_study(cfg, None, run_dir)
        if name == "killed":
            pid = os.fork()
            if pid == 0:
                try:
                    run_worker(cfg, run_dir, fit=_killed_at(4), log=lambda m: None)
                finally:
                    os._exit(1)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGKILL
            assert [s for _, s, _, _ in _trials(cfg, run_dir)][4] == "RUNNING"
        logs = []
        run_worker(cfg, run_dir, fit=fake_fit, log=logs.append)
        runs[name] = _trials(cfg, run_dir)
    assert runs["killed"] == runs["whole"]
    assert any("trial 4" in m and "its own number" in m for m in logs), logs
    assert count_finished(optuna.load_study(study_name="killed", storage=make_storage(None, "runs/evolve/killed"))
                          .get_trials()) == 7


def test_a_study_cut_while_enqueueing_its_noise_seeds_enqueues_the_rest(cfg_for):
    """Killed after the first of three noise trials was enqueued: the rerun's prepare_study enqueues the other
    two (before: it enqueued only into an empty study, and the noise floor had one seed)."""
    cfg = cfg_for("cut-enqueue", trials=5, epochs=1, noise_seeds=3, workers=1)
    run_dir = Path("runs/evolve/cut-enqueue")
    study = optuna.create_study(study_name=cfg.name, storage=make_storage(None, run_dir), direction="maximize")
    space, base_hyp = load_space(cfg.resolved("space")), load_hyp(cfg.resolved("hyp"))
    study.enqueue_trial(base_params(space, base_hyp), user_attrs=noise_trial_attrs(cfg)[0], skip_if_exists=False)
    prepare_study(cfg, None, run_dir)
    prepare_study(cfg, None, run_dir)  # and a second rerun adds nothing more
    seeds = [t.user_attrs.get(NOISE_ATTR) for t in study.get_trials()]
    assert seeds == [0, 1, 2]


def test_a_study_killed_in_every_phase_ends_as_the_uninterrupted_study(tmp_path):
    """One kill point drawn (seeded) in each phase - base run, trials, retrain, prune, report - each a SIGKILL of
    the whole process group, the study run again after each: summary.json (timings aside), evolve.csv, retrain.csv,
    prune_results.csv and channels.csv equal the uninterrupted study's, no temp file is left, and no finished unit
    of work (training, checkpoint) is redone beyond the one each kill cut. One worker: the GA's draws depend on
    which trials completed before each ask, which two workers decide by timing (docs/errors.md)."""
    result = run_crash_bench(tmp_path, "study", seed=3)
    assert result["failures"] == [] and result["exact"] == 1
    assert {key.split(":")[0] for key in result["cut"]} == set(cr.STUDY_PHASES)
