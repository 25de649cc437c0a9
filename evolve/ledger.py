"""Trial accounting shared by all workers, on every machine: what counts as finished, who owns a
running trial, heartbeats, and failing + retrying the trials of workers that died.

Counted as finished: COMPLETE, PRUNED and FAIL, except a FAIL that was retried because its worker
died or was interrupted (its retry is counted instead) and a retry withdrawn because the "dead"
worker turned out alive and told its result (see `keep_result`). A trial that fails on its own
(NaN loss, out of memory, bad hyp) is a result of the search and counts, so a space full of failing
candidates still ends.

Retries follow Optuna's convention everywhere: `RetryStale` (Optuna's
RetryHeartbeatStaleTrialCallback, copying only what a retry should keep) enqueues the params again
with system attrs `failed_trial` / `retry_history`, and a FAIL whose number is in some trial's
retry history is not counted.

Liveness, by storage:
- An RDB URL (PostgreSQL, MySQL, SQLite): Optuna's own heartbeat (`record_heartbeat`, stored and
  compared with the database's clock, so machines' clocks never matter) and `fail_stale_trials`,
  which runs the storage's RetryStale callback.
- The journal file (one machine; Optuna has no heartbeat for it): our heartbeat thread writes the
  time into a system attr, and a RUNNING trial is stale when its owner process is gone (checked only
  when it ran in our PID namespace on this boot: a container with host networking shares the host
  name but not the PIDs) or when its heartbeat is older than `grace`.

A RUNNING trial whose worker died on this machine (killed, the machine's job stopped) is not retried
but taken over (`adopt_orphan`): it runs again under its own number, with its own params and seed. A
retry takes a new number, and the GA seeds its draws by trial number: every later trial of a resumed
study would differ from the uninterrupted study's. A trial taken over `retries` times and orphaned again
is failed and retried as a stale one.
"""
from __future__ import annotations

import copy
import os
import socket
import threading
import time
import warnings
from functools import lru_cache
from typing import Any, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from core.atomic import process_alive

OWNER = "evolve_owner"          # system attr: {'host', 'boot', 'pidns', 'pid', 'worker'}
HEARTBEAT = "evolve_heartbeat"  # system attr (journal only): unix time of the last beat
WITHDRAWN = "evolve_withdrawn"  # system attr: a retry made moot by the original's late result (not counted)
ADOPTED = "evolve_adopted"  # system attr: times the trial was taken over from a worker that died on this machine
RECOVERED_FROM = "recovered_from"  # user attr: this COMPLETE trial is the late result of a trial failed as stale
CARRIED_ATTRS = ("base", "noise_seed", "train_seed")  # what a retry keeps of the trial it re-runs


class RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry callback, given only what a retry should inherit: the enqueued params and the
    seed/role attrs (not the dead run's worker, timings or fail_reason)."""

    def __init__(self, max_retry: int | None = None) -> None:
        with warnings.catch_warnings():  # experimental since Optuna 2.8, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        kept = copy.copy(trial)
        kept.user_attrs = {**{k: trial.user_attrs[k] for k in CARRIED_ATTRS if k in trial.user_attrs},
                           "retry_of": trial.number}
        kept.system_attrs = {k: v for k, v in trial.system_attrs.items()
                             if k in ("fixed_params", "failed_trial", "retry_history")}
        super().__call__(study, kept)  # fixed_params kept: one stopped before suggesting re-runs its enqueued params


class RecordedTrial:
    """A trial whose attrs and reports are also kept in this process. If another worker fails it as
    stale while this one is in fact alive, the storage refuses further writes: training goes on (no
    pruning decisions from then on) and the worker adds the result with `keep_result`."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial
        self.recorded_attrs: dict[str, Any] = {}
        self.intermediate: dict[int, float] = {}
        self.orphaned = False  # failed as stale by another worker while we ran it

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def _write(self, fn: Any, *args: Any) -> None:
        if not self.orphaned:
            try:
                fn(*args)
            except UpdateFinishedTrialError:
                self.orphaned = True

    def set_user_attr(self, key: str, value: Any) -> None:
        self.recorded_attrs[key] = value
        self._write(self._trial.set_user_attr, key, value)

    def report(self, value: float, step: int) -> None:
        self.intermediate[step] = value
        with warnings.catch_warnings():  # a trial taken over from a dead worker reports its first epochs again
            warnings.filterwarnings("ignore", message="The reported value is ignored because")
            self._write(self._trial.report, value, step)

    def should_prune(self) -> bool:
        return not self.orphaned and self._trial.should_prune()


def retry_history(t: FrozenTrial) -> list[int]:
    """The trials `t` re-runs, oldest first (the system attr Optuna's retry callback writes; its own
    accessor only adds an experimental warning)."""
    return list(t.system_attrs.get("retry_history", []))


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Numbers of the trials that some retry re-runs."""
    return {n for t in trials for n in retry_history(t)}


def is_counted(t: FrozenTrial, retried: set[int]) -> bool:
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and t.number not in retried and not t.system_attrs.get(WITHDRAWN, False)


def count_finished(trials: Sequence[FrozenTrial]) -> int:
    retried = retried_numbers(trials)
    return sum(is_counted(t, retried) for t in trials)


def count_running(trials: Sequence[FrozenTrial]) -> int:
    return sum(t.state == TrialState.RUNNING for t in trials)


@lru_cache(maxsize=1)
def process_space() -> dict[str, str]:
    """Which PIDs this process can see: the kernel boot and the PID namespace (host name for display)."""
    def read(fn):  # noqa: ANN001
        try:
            return fn()
        except OSError:
            return ""
    return {"host": socket.gethostname(),
            "boot": read(lambda: open("/proc/sys/kernel/random/boot_id").read().strip()),
            "pidns": read(lambda: os.readlink("/proc/self/ns/pid"))}


def has_heartbeat(study: optuna.Study) -> bool:
    """True on an RDB storage opened with a heartbeat interval (Optuna's heartbeat is in charge)."""
    storage = study._storage
    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


def claim_owner(study: optuna.Study, trial_id: int, worker: int) -> None:
    """Record who runs the trial and give it a first heartbeat."""
    storage = study._storage
    storage.set_trial_system_attr(trial_id, OWNER, {**process_space(), "pid": os.getpid(), "worker": int(worker)})
    _beat(study, trial_id)


def _beat(study: optuna.Study, trial_id: int) -> None:
    if has_heartbeat(study):
        study._storage.record_heartbeat(trial_id)  # the database's clock
    else:
        study._storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())


class Heartbeat:
    """Context manager: beats for `trial_id` every `interval` seconds in a daemon thread."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        self.study, self.trial_id, self.interval = study, trial_id, float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="evolve-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                _beat(self.study, self.trial_id)
            except (UpdateFinishedTrialError, KeyError):
                return  # finished (or failed as stale by another worker): nothing left to keep alive
            except Exception:
                continue  # a transient storage error: try again next beat

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def died_here(t: FrozenTrial) -> bool:
    """Is `t` RUNNING in a worker that ran in this machine's PID space and is gone?"""
    owner = t.system_attrs.get(OWNER) or {}
    here = process_space()
    same_pids = bool(here["boot"]) and owner.get("boot") == here["boot"] and owner.get("pidns") == here["pidns"]
    return t.state == TrialState.RUNNING and same_pids and not process_alive(int(owner.get("pid", -1)))


def adoptable(t: FrozenTrial, max_adoptions: int) -> bool:
    return died_here(t) and int(t.system_attrs.get(ADOPTED, 0)) < max_adoptions


def adopt_orphan(study: optuna.Study, worker: int, max_adoptions: int) -> FrozenTrial | None:
    """Take over the lowest-numbered trial whose worker died on this machine (call under the study lock): it
    becomes this process's, to run again under its number; None when there is none (module docstring)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if adoptable(t, max_adoptions):
            try:
                study._storage.set_trial_system_attr(t._trial_id, ADOPTED, int(t.system_attrs.get(ADOPTED, 0)) + 1)
            except UpdateFinishedTrialError:
                continue
            claim_owner(study, t._trial_id, worker)
            return t
    return None


def stale_reason(t: FrozenTrial, grace: float, now: float | None = None, max_adoptions: int = 0) -> str | None:
    """Why RUNNING trial `t` (journal storage) is stale, or None if its worker looks alive or a worker will take
    it over (`adoptable`)."""
    if t.state != TrialState.RUNNING or adoptable(t, max_adoptions):
        return None
    owner = t.system_attrs.get(OWNER) or {}
    if died_here(t):
        return f"worker {owner.get('worker')} (pid {owner.get('pid')}) died"
    beat = t.system_attrs.get(HEARTBEAT)
    if beat is None and t.datetime_start is not None:
        beat = t.datetime_start.timestamp()
    now = time.time() if now is None else now
    if beat is not None and now - float(beat) > grace:
        return f"no heartbeat for {now - float(beat):.0f} s (worker {owner.get('worker')} on {owner.get('host')})"
    return None


def fail_and_retry(study: optuna.Study, t: FrozenTrial, reason: str, max_retries: int) -> bool:
    """Mark RUNNING trial `t` FAIL with `reason` and retry it (RetryStale, at most `max_retries` times).

    Returns True if this process failed it (another worker may have won the race).
    """
    storage = study._storage
    retry = len(retry_history(t)) < max_retries
    try:  # attrs first: a finished trial can no longer be changed
        storage.set_trial_user_attr(t._trial_id, "fail_reason", f"{reason}" + ("; retried" if retry else ""))
        if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    if retry:  # a sampler trial cut before it drew anything is retried too: its retry draws afresh, same seeds
        RetryStale(max_retry=max_retries)(study, storage.get_trial(t._trial_id))
    return True


def fail_stale(study: optuna.Study, grace: float, max_retries: int) -> list[int]:
    """Fail (and retry) every stale RUNNING trial; returns their numbers."""
    if has_heartbeat(study):  # Optuna's heartbeat, the database's clock; the storage's callback retries
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
        return sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if t.number in running)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(t, grace, max_adoptions=max_retries)
        if reason and fail_and_retry(study, t, f"stale: {reason}", max_retries):
            failed.append(t.number)
    return failed


def keep_result(study: optuna.Study, trial_id: int, value: float | list[float], user_attrs: dict[str, Any],
                intermediate: dict[int, float]) -> int | None:
    """A trial failed as stale while its worker lived on and finished: add its result as a new COMPLETE
    trial and withdraw its still-waiting retry (call under the study lock, so no worker takes it
    meanwhile). Returns the new trial's number; None when a retry already runs or has finished: it measures
    the same params and seed, and keeping both would count the trial twice (a noise seed too)."""
    stale = study._storage.get_trial(trial_id)
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    if any(stale.number in retry_history(t) and (t.state == TrialState.RUNNING or is_counted(t, retried))
           for t in trials):
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if stale.number in retry_history(t):
            try:
                study._storage.set_trial_system_attr(t._trial_id, WITHDRAWN, True)
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                pass
    attrs = {k: v for k, v in {**stale.user_attrs, **user_attrs}.items() if k != "fail_reason"}
    result = optuna.create_trial(
        state=TrialState.COMPLETE, **({"values": value} if isinstance(value, (list, tuple)) else {"value": value}),
        params=stale.params, distributions=stale.distributions,
        user_attrs={**attrs, RECOVERED_FROM: stale.number}, intermediate_values=dict(intermediate),
        system_attrs={k: v for k, v in stale.system_attrs.items() if k in ("fixed_params",)})
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=result)
    return study._storage.get_trial_number_from_id(trial_id)
