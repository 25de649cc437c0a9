"""One worker process: claim a trial, train it, tell the result; repeat until the study has N finished trials.

`python -m evolve.worker --run-dir runs/evolve/NAME --worker 0 --device cpu` (started by the
launcher; the storage URL, if any, comes in the EVOLVE_STORAGE environment variable so that
credentials never appear in a command line or a file).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import cv2
import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal import JournalFileOpenLock, JournalFileSymlinkLock
from optuna.trial import TrialState

from core.cli import setup_logging
from core.hyp import load_hyp
from evolve import budget
from evolve.ledger import (Heartbeat, RecordedTrial, adopt_orphan, claim_owner, count_finished, count_running,
                           fail_and_retry, fail_stale, keep_result)
from evolve.objective import Objective
from evolve.samplers import make_pruner, make_sampler, prior_draws
from evolve.space import check_base, load_space
from evolve.storage import make_storage, study_lock
from evolve.tracking import trial_trackers
from evolve.study_config import StudyConfig, load_study

__all__ = ["load_callable", "run_worker"]

LOGGER = logging.getLogger(__name__)

STUDY_FILE = "study.yaml"  # the resolved study the launcher wrote into the run dir


class WorkerSetupError(RuntimeError):
    """Something every trial of this worker needs is broken: stop instead of failing each trial."""


def load_callable(spec: str) -> Callable[..., Any]:
    """'package.module:function' -> the function (used to inject a fit for tests and benches)."""
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"--fit must look like 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), attr)


class Interrupts:
    """SIGTERM/SIGINT: always ask the loop to stop; raise KeyboardInterrupt only while a trial trains, so
    the trial in hand is failed and re-enqueued, and no signal lands between 'ask' and 'run'.

    Never inside Optuna's journal file lock: an exception inside acquire()'s try releases the lock, which
    may be another process's (two writers then append at once), and release() cut just after its unlink
    unlinks again in its own cleanup and fails with FileNotFoundError. A signal arriving there is sent
    again shortly, until it finds the process outside the lock."""

    RETRY_S = 0.05

    def __init__(self) -> None:
        self.stop_requested = False
        self.interruptible = False

    def install(self) -> "Interrupts":
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        if not self.interruptible:
            return
        if _in_journal_lock(frame):
            threading.Timer(self.RETRY_S, os.kill, (os.getpid(), signum)).start()
            return
        self.interruptible = False  # one interrupt is enough: let the cleanup run
        raise KeyboardInterrupt(f"signal {signum}")


def _in_journal_lock(frame: Any) -> bool:
    """Is `frame` (or a caller) inside the acquire or release of one of Optuna's journal file locks?"""
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("acquire", "release") and isinstance(frame.f_locals.get("self"),
                                                                         (JournalFileSymlinkLock, JournalFileOpenLock)):
            return True
        frame = frame.f_back
    return False


def run_worker(cfg: StudyConfig, run_dir: Path | str, storage_url: str | None = None, worker: int = 0,
               device: str = "cpu", device_label: str = "cpu", fit: Callable[..., Any] | None = None,
               poll: float = 1.0, log: Callable[[str], None] = LOGGER.info,
               interrupts: Interrupts | None = None, deadline: float | None = None) -> int:
    """Run trials until the study counts `cfg.trials` finished ones, or until `deadline` (unix time, read on
    evolve.budget's clock) has passed: no trial starts after it. Returns how many this worker ran."""
    run_dir = Path(run_dir)
    space = load_space(cfg.resolved("space"))
    base_hyp = load_hyp(cfg.resolved("hyp"))
    check_base(space, base_hyp, cfg.hyp or "base hyp")
    storage = make_storage(storage_url, run_dir, heartbeat=cfg.heartbeat, max_retries=cfg.retries)
    draws = prior_draws(optuna.load_study(study_name=cfg.name, storage=storage).get_trials(deepcopy=False), worker)
    if draws:
        log(f"worker {worker}: resuming after {draws} draw(s) of this worker's sampler: it is seeded anew")
    sampler = make_sampler(cfg.sampler, space, base_hyp, seed=cfg.seed, worker=worker, ga=cfg.ga, draws=draws)
    study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler,
                              pruner=make_pruner(cfg.pruner, cfg.epochs, cfg.pruner_warmup))
    objective = Objective(cfg, space, base_hyp, run_dir, fit=fit, device=device, device_label=device_label,
                          worker=worker)
    try:
        warm = objective.warm_up()
        if warm:
            log(f"worker {worker}: images decoded into the RAM cache in {warm:.1f}s")
    except Exception as e:  # data every trial needs: failing N trials with the same reason would teach nothing
        raise WorkerSetupError(f"worker {worker}: cannot load the study's data ({type(e).__name__}: {e}); "
                               f"no trial was started") from e
    tracked = trial_trackers(cfg, run_dir)  # one MLflow and / or TensorBoard run per trial
    if tracked is not None:
        objective.on_epoch = tracked.epoch
    grace = 3 * cfg.heartbeat
    interrupts = interrupts or Interrupts()
    parent = os.getppid()
    ran = 0
    while True:
        if os.getppid() != parent:  # the launcher is gone: finish nothing new
            log(f"worker {worker}: launcher exited, stopping")
            return ran
        if interrupts.stop_requested:
            raise KeyboardInterrupt("stop requested")
        if deadline is not None and budget.now() >= deadline:
            log(f"worker {worker}: the study's deadline has passed: no new trial")
            return ran
        with study_lock(storage_url, run_dir, cfg.name):  # every machine's workers, on a database
            trial = None
            orphan = adopt_orphan(study, worker, cfg.retries)  # before any new draw: the order of a run never cut
            if orphan is not None:
                log(f"worker {worker}: trial {orphan.number}'s worker died: running it again under its own number")
                trial = optuna.trial.Trial(study, orphan._trial_id)
            else:
                for n in fail_stale(study, grace, cfg.retries):
                    log(f"worker {worker}: trial {n} was stale (its worker died): failed and re-enqueued")
                trials = study.get_trials(deepcopy=False)
                done, running = count_finished(trials), count_running(trials)
                if done >= cfg.trials:
                    return ran
                if done + running < cfg.trials:
                    with warnings.catch_warnings():  # we beat ourselves (ledger.Heartbeat): ask/tell, not optimize
                        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                        trial = study.ask()
                    claim_owner(study, trial._trial_id, worker)
        if trial is None:  # the others' running trials fill the budget; wait in case one dies
            time.sleep(poll)
            continue
        run_trial(study, trial, tracked.wrap(objective) if tracked else objective, cfg, worker, log, interrupts,
                  lock=lambda: study_lock(storage_url, run_dir, cfg.name))
        if tracked is not None:
            tracked.told(study, trial._trial_id)
        ran += 1


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective, cfg: StudyConfig, worker: int,
              log: Callable[[str], None], interrupts: Interrupts | None = None,
              lock: Callable[[], Any] | None = None) -> None:
    """Train one trial and tell its outcome; an interrupt fails and re-enqueues it, then propagates.

    If another worker failed the trial as stale meanwhile (this one was alive but its heartbeat late),
    a finished result is still kept: added as a new trial, its retry withdrawn (under `lock`), unless the
    retry is already running or done (then the retry's result is the trial's).
    """
    state, value = TrialState.FAIL, None
    recorded = RecordedTrial(trial)
    with Heartbeat(study, trial._trial_id, cfg.heartbeat):
        try:
            if interrupts is not None:
                interrupts.interruptible = True
            try:
                value, state = objective(recorded), TrialState.COMPLETE
            finally:
                if interrupts is not None:
                    interrupts.interruptible = False
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            _fail_interrupted(study, trial, worker)
            raise
        except Exception as e:
            if _caused_by_interrupt(e, interrupts):
                _fail_interrupted(study, trial, worker)
                raise KeyboardInterrupt(f"{type(e).__name__} while interrupted") from e
            if _storage_lost(e):  # not the hyp's failure: the trial stays RUNNING, a rerun takes it over
                raise
            log(f"worker {worker}: trial {trial.number} failed: {type(e).__name__}: {e}")  # the study goes on
    try:
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            raise UpdateFinishedTrialError("failed as stale by another worker")
        if state == TrialState.COMPLETE:
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
    except UpdateFinishedTrialError:
        if state != TrialState.COMPLETE:
            log(f"worker {worker}: trial {trial.number} was already failed as stale by another worker")
            return
        with (lock() if lock else contextlib.nullcontext()):
            number = keep_result(study, trial._trial_id, value, recorded.recorded_attrs, recorded.intermediate)
        log(f"worker {worker}: trial {trial.number} was failed as stale while this worker ran it; " +
            (f"its result is kept as trial {number}" if number is not None else
             "its retry already runs (or ran) the same params and seed: this result is not counted twice"))


def _caused_by_interrupt(e: BaseException, interrupts: Interrupts | None) -> bool:
    """An error raised after a stop signal, or while a KeyboardInterrupt was being handled, is the interrupt:
    e.g. Optuna's journal lock release, cut by the signal just after its unlink, then fails to unlink
    again in its own cleanup with FileNotFoundError. Recorded as such a trial's reason, it would be
    a failure of the hyps rather than a trial to re-run."""
    if interrupts is not None and interrupts.stop_requested:
        return True
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _storage_lost(e: BaseException) -> bool:
    """Did the study's database stop answering (evolve.patient_db gave up waiting)?"""
    seen = set()
    while e is not None and id(e) not in seen:
        if type(e).__name__ == "DatabaseUnavailable":  # evolve.patient_db's, imported only with a database
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _fail_interrupted(study: optuna.Study, trial: optuna.Trial, worker: int) -> None:
    """Fail the trial in hand as interrupted and re-enqueue its params (a re-run trains it again)."""
    frozen = study._storage.get_trial(trial._trial_id)
    fail_and_retry(study, frozen, f"interrupted (worker {worker})", max_retries=10**6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="device passed to fit ('cpu' or '0' with CUDA_VISIBLE_DEVICES)")
    ap.add_argument("--device-label", default=None, help="device name recorded in the trials (e.g. cuda:3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    ap.add_argument("--deadline", type=float, default=None, help="unix time after which no trial starts")
    ap.add_argument("--fit", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # The worker's own lines (`log` below, on stdout) are its log file, whose last line the launcher shows
    # when a worker stops early; of the library's records only warnings and errors join them.
    setup_logging(logging.WARNING)
    interrupts = Interrupts().install()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)  # OpenCV's own pool would otherwise take every core for decoding/warps
    cfg = load_study(Path(args.run_dir) / STUDY_FILE)
    fit = load_callable(args.fit) if args.fit else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        ran = run_worker(cfg, args.run_dir, os.environ.get("EVOLVE_STORAGE") or None, args.worker, args.device,
                         args.device_label or args.device, fit, log=log, interrupts=interrupts,
                         deadline=args.deadline)
    except KeyboardInterrupt:
        log(f"worker {args.worker}: stopped by a signal (a trial in training was failed and re-enqueued)")
        return 130
    except WorkerSetupError as e:
        log(str(e))
        return 2
    except Exception as e:
        if not _storage_lost(e):
            raise
        log(f"worker {args.worker}: stopped: {e}")
        return 3
    log(f"worker {args.worker}: done, ran {ran} trial(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
