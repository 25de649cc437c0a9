"""Where a study stands, read from its storage alone: `python -m evolve status NAME`.

Per study: trials finished of the total (with running, pruned and failed), the best so far with its gain over
the base hyp in noise-floor standard deviations, the noise floor itself, and an ETA from the measured trial
times: the trials still to finish x the median seconds of a finished trial / the workers seen running at once
(the distinct workers of the last trials), capped by the study's deadline when it has a `budget:`. It reads
the storage only, so it works while the workers run on this or other machines (a journal file is read under
its own lock; an RDB URL is read as any client).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from evolve import budget
from evolve.ledger import count_finished, count_running
from evolve.noise import NoiseFloor, expected_best_sd, noise_floor
from evolve.objectives import fitness_value, has_fitness
from evolve.storage import open_target

__all__ = ["StudyStatus", "format_status", "main", "status_line", "study_status"]

RECENT = 20  # trials whose workers count as running at once


@dataclass
class StudyStatus:
    name: str
    done: int                      # finished trials as the study counts them (evolve/ledger.py)
    total: int                     # the trial count asked (0: unknown)
    running: int
    pruned: int
    failed: int
    best_number: int | None
    best_value: float
    best_gain_sd: float            # nan while the noise floor is unknown
    searched: int                  # complete trials that are not the base hyp's
    floor: NoiseFloor | None
    trial_s: float                 # median seconds of a finished trial (nan before the first)
    parallel: int                  # workers that ran trials at once
    eta_s: float                   # seconds to the trial count (0 when reached; nan unknown)
    deadline: budget.Deadline

    @property
    def eta_capped(self) -> bool:
        return self.deadline.at is not None and math.isfinite(self.eta_s) and self.eta_s > self.deadline.left()


def _seconds(t: FrozenTrial) -> float:
    s = t.user_attrs.get("seconds")
    if s is None and t.datetime_start and t.datetime_complete:
        s = (t.datetime_complete - t.datetime_start).total_seconds()
    return float(s) if s is not None else math.nan


def _parallel(trials: Sequence[FrozenTrial]) -> int:
    recent = sorted((t for t in trials if t.state != TrialState.WAITING), key=lambda t: t.number)[-RECENT:]
    workers = {(t.user_attrs.get("host"), t.user_attrs.get("worker")) for t in recent if "worker" in t.user_attrs}
    return max(len(workers), sum(t.state == TrialState.RUNNING for t in trials), 1)


def study_status(study: optuna.Study, total: int | None = None) -> StudyStatus:
    """The study's standing now (evolve.budget's clock), from its trials and user attrs."""
    trials = study.get_trials(deepcopy=False)
    config = study.user_attrs.get("config") or {}
    total = int(total if total is not None else config.get("trials", 0))
    done = count_finished(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and has_fitness(t)]
    best = max(complete, key=lambda t: (fitness_value(t), -t.number)) if complete else None
    floor = noise_floor(trials)
    durations = [s for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                 if math.isfinite(s := _seconds(t))]
    trial_s = statistics.median(durations) if durations else math.nan
    parallel = _parallel(trials)
    left = max(total - done, 0)
    eta = 0.0 if left == 0 else (math.ceil(left / parallel) * trial_s if durations else math.nan)
    plan = config.get("budget") or {}
    start = study.user_attrs.get(budget.START_ATTR)
    deadline = (budget.Deadline(float(start) + float(plan["hours"]) * 3600, f"budget: {plan['hours']} h")
                if plan.get("hours") and start is not None else budget.Deadline())
    return StudyStatus(
        name=study.study_name, done=done, total=total, running=count_running(trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        best_number=best.number if best else None, best_value=fitness_value(best) if best else math.nan,
        best_gain_sd=floor.gain_sd(fitness_value(best)) if best and floor else math.nan,
        searched=sum(not t.user_attrs.get("base") for t in complete), floor=floor, trial_s=trial_s,
        parallel=parallel, eta_s=eta, deadline=deadline)


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "unknown"
    return str(timedelta(seconds=round(max(s, 0.0))))


def format_status(s: StudyStatus) -> str:
    """A few lines a person reads: progress, best, noise floor, ETA."""
    total = f"/{s.total}" if s.total else ""
    lines = [f"study '{s.name}': {s.done}{total} trials finished ({s.running} running, {s.pruned} pruned, "
             f"{s.failed} failed)"]
    if s.best_number is None:
        lines.append("best so far: none yet")
    else:
        gain = (f" ({s.best_gain_sd:+.1f} sd from the base hyp; the best of {s.searched} noise draws reaches "
                f"about {expected_best_sd(s.searched):+.1f} sd)" if math.isfinite(s.best_gain_sd) and s.searched
                else f" ({s.best_gain_sd:+.1f} sd)" if math.isfinite(s.best_gain_sd) else "")
        lines.append(f"best so far: trial {s.best_number}, fitness {s.best_value:.4f}{gain}")
    lines.append(f"noise floor: base hyp {s.floor.mean:.4f} ± {s.floor.sd:.4f} (sd over {s.floor.n} seeds)"
                 if s.floor else "noise floor: not measured yet (fewer than 2 base-hyp seeds finished)")
    eta = "done" if s.total and s.done >= s.total else _duration(s.eta_s)
    lines.append(f"ETA: {eta} (median trial {_duration(s.trial_s)}, {s.parallel} worker(s) at once)" +
                 (f"; the deadline {s.deadline.describe()} comes first" if s.eta_capped else
                  f"; deadline {s.deadline.describe()}" if s.deadline.at is not None else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m evolve status NAME [--storage URL]`: print the study's status."""
    ap = argparse.ArgumentParser(prog="python -m evolve status", description=__doc__.splitlines()[0])
    ap.add_argument("name", help="study name (runs/evolve/NAME), a run dir, or a journal file")
    ap.add_argument("--storage", default=None, help="Optuna RDB URL the study lives in (default: its journal file)")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.storage:
        target, name = args.storage, args.name
    else:
        path = Path(args.name)
        target, name = (str(path), None) if path.exists() else (str(Path("runs") / "evolve" / args.name), None)
    try:
        study, _ = open_target(target, name)
    except (FileNotFoundError, ValueError) as e:
        print(f"evolve status: {e}", file=sys.stderr)
        return 2
    print(format_status(study_status(study)))
    return 0


def status_line(s: StudyStatus) -> str:
    """One line for a progress bar: best with its gain, the noise floor, the ETA."""
    best = (f"best {s.best_value:.4f}" + (f" ({s.best_gain_sd:+.1f} sd)" if math.isfinite(s.best_gain_sd) else "")
            if s.best_number is not None else "best -")
    floor = f"floor {s.floor.mean:.4f}±{s.floor.sd:.4f}" if s.floor else "floor -"
    eta = "done" if s.total and s.done >= s.total else _duration(s.eta_s)
    return f"{best} | {floor} | ETA {eta}" + (" (deadline first)" if s.eta_capped else "")
