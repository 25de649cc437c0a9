"""Orchestration with a fake fit (tests/test_evolve_fakes.py): workers sharing a journal, SIGKILL resume,
failing trials, interrupts, report regeneration."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from core.hyp import load_hyp
from evolve.launcher import launch, prepare_study
from evolve.ledger import count_finished
from evolve.report import main as report_main
from evolve.storage import make_storage
from evolve.worker import run_worker
from tests.helpers import FAKE_FIT, REPO, fake_fit

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(cfg, run_dir):
    return optuna.load_study(study_name=cfg.name, storage=make_storage(None, run_dir))


def test_two_worker_processes_share_one_journal_exactly(cfg_for, monkeypatch):
    monkeypatch.setenv("FAKE_FIT_SLEEP", "0.1")
    cfg = cfg_for("pair", trials=10, epochs=3, workers=2)
    run_dir = Path("runs/evolve/pair")
    assert launch(cfg, fit_spec=FAKE_FIT, poll=0.3) == 0
    study = _study(cfg, run_dir)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(10))                # none lost, none extra
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}          # both processes took trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 10  # no duplicated child
    assert trials[0].user_attrs.get("base") and trials[0].params["lr0"] == load_hyp(cfg.resolved("hyp"))["lr0"]  # the base hyp first
    df = pd.read_csv(run_dir / "evolve.csv")
    assert df.number.tolist() == list(range(10)) and set(df.state) == {"COMPLETE"}
    assert df.epochs.tolist() == [3] * 10 and (df.seconds > 0.25).all()
    t0 = trials[0]
    assert {"P", "R", "mAP50", "mAP50-95", "val_box", "seconds", "device", "seed", "data_sha256",
            "model_sha256"} <= set(t0.user_attrs)
    assert len(t0.user_attrs["data_sha256"]) == 64 and t0.intermediate_values.keys() == {1, 2, 3}
    best = max(trials, key=lambda t: t.value)
    hyp = load_hyp(run_dir / "best_hyp.yaml")
    assert hyp["lr0"] == best.params["lr0"] and hyp["fliplr"] == 0.5  # full hyp, fixed genes at base
    header = yaml.safe_load((run_dir / "best_hyp.yaml").read_text())
    assert header["_trial"] == best.number and abs(header["_fitness"] - best.value) < 1e-6
    for png in ("evolve.png", "fitness.png", "importances.png"):
        assert (run_dir / png).stat().st_size > 10_000

    # Resume with a larger budget adds exactly the difference; the report redraws from storage alone.
    assert launch(cfg_for("pair", trials=12, epochs=3, workers=2), fit_spec=FAKE_FIT, poll=0.3) == 0
    assert count_finished(_study(cfg, run_dir).get_trials()) == 12
    for f in ("evolve.csv", "best_hyp.yaml", "evolve.png", "fitness.png", "importances.png"):
        (run_dir / f).unlink()
    out = Path("redrawn")
    assert report_main([str(run_dir), "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "evolve.csv")) == 12
    assert load_hyp(out / "best_hyp.yaml") == load_hyp(REPO / "studies/hyp/scratch.yaml") | {
        k: float(v) for k, v in max(_study(cfg, run_dir).get_trials(), key=lambda t: t.value).params.items()}
    assert all((out / f).exists() for f in ("evolve.png", "fitness.png", "importances.png"))


def test_sigkilled_worker_loses_nothing_finished_and_study_completes(cfg_for):
    cfg = cfg_for("kill", trials=5, epochs=2, workers=1)
    run_dir = Path("runs/evolve/kill")
    prepare_study(cfg, None, run_dir)
    env = {**os.environ, "FAKE_FIT_SLEEP": "0.4"}
    proc = subprocess.Popen([sys.executable, "-m", "evolve.worker", "--run-dir", str(run_dir), "--fit", FAKE_FIT],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = _study(cfg, run_dir)
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once 2 trials finished and the 3rd is mid-training
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if len(done) >= 2 and any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.state, t.value) for t in study.get_trials() if t.state == TrialState.COMPLETE}
    killed = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert len(before) >= 2 and len(killed) == 1

    ran = run_worker(cfg, run_dir, fit=fake_fit, poll=0.05, log=lambda m: None)   # resume
    trials = study.get_trials()
    assert {n: (trials[n].state, trials[n].value) for n in before} == before    # finished ones untouched
    dead = trials[killed[0].number]  # taken over by the resumed worker: run again under its own number
    assert dead.state == TrialState.COMPLETE and dead.params == killed[0].params
    assert not [t for t in trials if "retry_of" in t.user_attrs]
    assert count_finished(trials) == 5 and ran == 5 - len(before)
    assert len(trials) == 5                                                     # no retry beside it


def _one_worker_study(cfg_for, name, trials):
    cfg = cfg_for(name, trials=trials, epochs=2, workers=1)
    run_dir = Path(f"runs/evolve/{name}")
    prepare_study(cfg, None, run_dir)
    return cfg, run_dir


def _fit_with_faults(faults):
    """fake_fit, except that call n (1-based) first runs faults[n], which raises."""
    calls = []

    def fit(data, model, hyp, opts, callbacks=None):
        calls.append(hyp["lr0"])
        if len(calls) in faults:
            faults[len(calls)]()
        return fake_fit(data, model, hyp, opts, callbacks)
    return fit


def _raise(error):
    def fault():
        raise error
    return fault


def test_failing_trial_is_recorded_and_the_study_goes_on(cfg_for):
    cfg, run_dir = _one_worker_study(cfg_for, "fail", trials=4)
    flaky_fit = _fit_with_faults({2: _raise(FloatingPointError("training loss is nan at epoch 0")),
                                  3: _raise(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))})
    assert run_worker(cfg, run_dir, fit=flaky_fit, log=lambda m: None) == 4
    trials = _study(cfg, run_dir).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["fail_reason"] == "FloatingPointError: training loss is nan at epoch 0"
    assert trials[2].user_attrs["fail_reason"].startswith("out of memory: RuntimeError")
    from evolve.report import write_outputs
    write_outputs(_study(cfg, run_dir), run_dir)
    df = pd.read_csv(run_dir / "evolve.csv")
    assert df.state.tolist() == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert df.fail_reason.fillna("").str.len().gt(0).tolist() == [False, True, True, False]


def test_an_error_raised_by_an_interrupt_fails_the_trial_as_interrupted(cfg_for):
    """Optuna's journal lock, cut by SIGINT just after its unlink, fails its own cleanup with
    FileNotFoundError: that trial was interrupted (re-enqueued, the worker stops), not failed by its hyps."""
    cfg, run_dir = _one_worker_study(cfg_for, "cut", trials=3)

    def cut_lock_release():
        try:
            raise KeyboardInterrupt("signal 2")
        except KeyboardInterrupt:
            os.unlink("journal.log.lock-gone.rename")  # FileNotFoundError, its context the interrupt

    interrupted_fit = _fit_with_faults({2: cut_lock_release})
    with pytest.raises(KeyboardInterrupt):
        run_worker(cfg, run_dir, fit=interrupted_fit, log=lambda m: None)
    trials = _study(cfg, run_dir).get_trials()
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["fail_reason"].startswith("interrupted (worker 0)")
    assert trials[2].state == TrialState.WAITING and trials[2].params == trials[1].params  # re-enqueued


def test_an_interrupt_waits_until_the_journal_lock_is_out_of_hand(tmp_path, monkeypatch):
    """SIGINT landing inside Optuna's lock release, after its unlink: the release's own cleanup unlinks
    again and fails with FileNotFoundError (the CI failure of 2026-12-05, a trial recorded as failed by its
    hyps). The worker's handler defers such a signal and sends it again, so the release completes and the
    interrupt lands after it."""
    from optuna.storages.journal import JournalFileSymlinkLock

    from evolve.worker import Interrupts

    target = tmp_path / "journal.log"
    target.touch()
    lock = JournalFileSymlinkLock(str(target))
    assert lock.acquire()
    real_unlink, sent = os.unlink, []

    def unlink_then_signal(path, *args, **kwargs):
        real_unlink(path, *args, **kwargs)
        if not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)  # handled before release() leaves its try block

    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts = Interrupts().install()
    interrupts.interruptible = True
    monkeypatch.setattr(os, "unlink", unlink_then_signal)
    try:
        with pytest.raises(KeyboardInterrupt):
            lock.release()
            released = True
            time.sleep(5)  # the deferred signal comes again within Interrupts.RETRY_S
        assert released and interrupts.stop_requested and sent
        assert not os.path.lexists(target.with_name("journal.log.lock"))
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])


def test_median_pruner_stops_bad_trials_early(cfg_for):
    cfg = cfg_for("prune", trials=8, epochs=4, workers=1, pruner="median", sampler="random")
    run_dir = Path("runs/evolve/prune")
    prepare_study(cfg, None, run_dir)
    run_worker(cfg, run_dir, fit=fake_fit, log=lambda m: None)
    trials = _study(cfg, run_dir).get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert count_finished(trials) == 8 and pruned
    assert all(t.user_attrs["epochs"] < 4 and t.user_attrs["stop_reason"].startswith("callback: pruned")
               for t in pruned)


def test_no_pruner_cuts_the_base_hyp_trials(cfg_for, monkeypatch):
    """Trial 0 and the noise seeds are the reference and the noise floor: a pruner that would prune every trial
    after its first epoch prunes only the searched ones."""
    monkeypatch.setattr(optuna.pruners.MedianPruner, "prune", lambda self, study, trial: True)
    cfg = cfg_for("prune-base", trials=5, epochs=3, workers=1, pruner="median", sampler="random", noise_seeds=2)
    run_dir = Path("runs/evolve/prune-base")
    prepare_study(cfg, None, run_dir)
    run_worker(cfg, run_dir, fit=fake_fit, log=lambda m: None)
    trials = _study(cfg, run_dir).get_trials()
    base = [t for t in trials if t.user_attrs.get("base")]
    searched = [t for t in trials if not t.user_attrs.get("base")]
    assert len(base) == 2 and all(t.state == TrialState.COMPLETE and t.user_attrs["epochs"] == 3 for t in base)
    assert searched and all(t.state == TrialState.PRUNED for t in searched)


def test_interrupt_stops_workers_and_rerun_resumes(cfg_for):
    cfg_for("int")  # chdir + data file
    env = {**os.environ, "FAKE_FIT_SLEEP": "0.3"}
    cmd = [sys.executable, "-m", "evolve", "--study", str(REPO / "studies/quick.yaml"), "--name", "int",
           "--data", "data.yaml", "--trials", "6", "--epochs", "2", "--fit", FAKE_FIT]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's Ctrl-C
    journal = Path("runs/evolve/int/journal.log")
    deadline = time.time() + 60
    while time.time() < deadline and not (journal.exists() and b'"state":1,' in journal.read_bytes()):
        time.sleep(0.1)  # wait until some trial completed (state 1 = COMPLETE in the journal)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted: run the same command again to resume" in out
    run = subprocess.run(cmd, env={**env, "FAKE_FIT_SLEEP": "0.01"}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    trials = optuna.load_study(study_name="int", storage=make_storage(None, "runs/evolve/int")).get_trials()
    assert count_finished(trials) == 6
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for t in trials:
        if t.state == TrialState.FAIL:  # only interrupted trials, each re-run with the same params
            assert t.user_attrs["fail_reason"].startswith("interrupted")
            ran = t.system_attrs.get("fixed_params") or t.params  # enqueued (complete) or drawn so far
            retries = [u.params for u in trials if u.user_attrs.get("retry_of") == t.number]
            assert len(retries) == 1  # one cut before it drew anything too: its retry draws them
            assert all(r[k] == v for r in retries for k, v in ran.items())


def test_a_trial_cut_before_its_first_suggest_is_retried_not_counted(tmp_path):
    """A sampler trial interrupted (or found stale) before it drew a parameter was labelled 'retried' but
    neither retried nor left out of the count: the study ended one trial short."""
    from evolve.ledger import fail_and_retry

    study = optuna.create_study(storage=make_storage(None, tmp_path), study_name="cut")
    trial = study.ask()  # no suggest yet
    trial.set_user_attr("train_seed", 7)
    assert fail_and_retry(study, study._storage.get_trial(trial._trial_id), "interrupted (worker 0)", max_retries=3)
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"].endswith("; retried")
    assert count_finished(trials) == 0
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["train_seed"] == 7  # the retry keeps the trial's seed
    again = study.ask()  # the retry: the sampler draws its parameters
    assert again.number == waiting[0].number and again.suggest_float("lr0", 1e-4, 1e-1, log=True) > 0
