"""Trial accounting shared by all workers: what counts as finished, who owns a running trial,
heartbeats, and failing + retrying the trials of workers that died.

Counted as finished: COMPLETE, PRUNED and FAIL, except a FAIL that was re-enqueued because its
worker died or was interrupted (its retry is counted instead). A trial that fails on its own
(NaN loss, out of memory, bad hyp) is a result of the search and counts, so a space full of
failing candidates still ends.

Journal storage has no heartbeat in Optuna, and Optuna's RDB heartbeat only runs inside
study.optimize(); workers here use ask/tell, so one mechanism serves both storages: a thread
writes the time into the trial's system attrs every `interval` seconds. A RUNNING trial is
stale when its owner process (same host) is gone, or when its heartbeat is older than `grace`.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

OWNER = "evolve_owner"          # system attr: {'host', 'pid', 'worker'}
HEARTBEAT = "evolve_heartbeat"  # system attr: unix time of the last beat
RETRIED = "evolve_retried"      # system attr: this FAIL was re-enqueued (not counted)
RETRY_COUNT = "retry_count"     # user attr of a retry: how many times its params were re-run
CARRIED_ATTRS = ("base", "noise_seed", "train_seed")  # what a retry keeps of the trial it re-runs


def is_counted(t: FrozenTrial) -> bool:
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and not t.system_attrs.get(RETRIED, False)


def count_finished(trials: Sequence[FrozenTrial]) -> int:
    return sum(is_counted(t) for t in trials)


def count_running(trials: Sequence[FrozenTrial]) -> int:
    return sum(t.state == TrialState.RUNNING for t in trials)


def claim_owner(study: optuna.Study, trial_id: int, worker: int) -> None:
    """Record who runs the trial and give it a first heartbeat."""
    storage = study._storage
    storage.set_trial_system_attr(trial_id, OWNER, {"host": socket.gethostname(), "pid": os.getpid(),
                                                    "worker": int(worker)})
    storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())


class Heartbeat:
    """Context manager: beats for `trial_id` every `interval` seconds in a daemon thread."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = study._storage, trial_id, float(interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="evolve-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_reason(t: FrozenTrial, grace: float, now: float | None = None) -> str | None:
    """Why RUNNING trial `t` is stale, or None if its worker looks alive."""
    if t.state != TrialState.RUNNING:
        return None
    owner = t.system_attrs.get(OWNER) or {}
    if owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1))):
        return f"worker {owner.get('worker')} (pid {owner.get('pid')}) died"
    beat = t.system_attrs.get(HEARTBEAT)
    if beat is None and t.datetime_start is not None:
        beat = t.datetime_start.timestamp()
    now = time.time() if now is None else now
    if beat is not None and now - float(beat) > grace:
        return f"no heartbeat for {now - float(beat):.0f} s (worker {owner.get('worker')} on {owner.get('host')})"
    return None


def fail_and_retry(study: optuna.Study, t: FrozenTrial, reason: str, max_retries: int) -> bool:
    """Mark RUNNING trial `t` FAIL with `reason`; re-enqueue its params unless retried `max_retries` times.

    Returns True if this process failed it (another worker may have won the race).
    """
    storage = study._storage
    retries = int(t.user_attrs.get(RETRY_COUNT, 0))
    retry = retries < max_retries
    # what it was running: the enqueued params (complete even if it was stopped before suggesting them: a noise
    # seed stays one), else what the sampler had drawn (a trial stopped while drawing keeps those, the retry draws
    # the rest); a sampler trial stopped before drawing anything is simply not counted
    params = dict(t.system_attrs.get("fixed_params") or {}) or dict(t.params)
    try:  # attrs first: a finished trial can no longer be changed
        storage.set_trial_user_attr(t._trial_id, "fail_reason", f"{reason}" + ("; retried" if retry else ""))
        storage.set_trial_system_attr(t._trial_id, RETRIED, retry)
        if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    if retry and params:
        kept = {k: t.user_attrs[k] for k in CARRIED_ATTRS if k in t.user_attrs}  # a noise trial stays one
        study.enqueue_trial(params, user_attrs={**kept, "retry_of": t.number, RETRY_COUNT: retries + 1},
                            skip_if_exists=False)
    return True


def fail_stale(study: optuna.Study, grace: float, max_retries: int) -> list[int]:
    """Fail (and retry) every stale RUNNING trial; returns their numbers."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(t, grace)
        if reason and fail_and_retry(study, t, f"stale: {reason}", max_retries):
            failed.append(t.number)
    return failed


@contextlib.contextmanager
def claim_lock(run_dir: Path | str) -> Iterator[None]:
    """Serialise 'count, then ask' across the workers of one machine, so exactly N trials run."""
    path = Path(run_dir) / "claim.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
