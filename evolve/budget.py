"""A study bounded by time: `budget: {hours: H, evolve: F}` in the study file, `--timeout` on the command line.

- `budget: hours` is the study's own clock: it starts when the study first runs with a budget (the start
  is a user attr of the study in its storage, `budget_start`), so every machine that joins it and every
  resume reads the same deadline, start + H hours. The clock runs while the study is stopped too; a resume
  after the deadline says so and starts nothing, unless `hours` is raised.
- `--timeout` (seconds, or `90m`, `2h`) bounds one command from its own start, as Optuna's `timeout`.
- A phase's deadline is the earlier of the two. Evolution: no worker asks for a new trial after it; trials
  already running finish (a pruner may still stop them early). `python -m evolve.study`: evolution gets the
  first share F of the hours (`evolve`, default 0.6), then the retrain starts no run after the study's
  deadline (runs started finish) and the prune phase runs only if time is left; what they skip, they say,
  and the report is written with what there is.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

__all__ = ["BUDGET_KEYS", "DEFAULT_EVOLVE_SHARE", "Deadline", "check_budget", "epoch_seconds", "evolve_share",
           "file_deadline", "parse_timeout", "phase_deadlines", "retrain_within", "study_deadline", "timeout_deadline",
           "trim_retrain"]

LOGGER = logging.getLogger(__name__)

BUDGET_KEYS = ("hours", "evolve", "latency_ms", "gflops")  # the cost limits: evolve/objectives.py
TIME_KEYS = ("hours", "evolve")
DEFAULT_EVOLVE_SHARE = 0.6  # evolve.study: evolution's share of the hours; retrain and prune get what is left
START_ATTR = "budget_start"  # study user attr: unix time the budget's clock started


def now() -> float:
    """The clock every deadline reads (tests replace it)."""
    return time.time()


@dataclass(frozen=True)
class Deadline:
    at: float | None = None   # unix time; None: no deadline
    why: str = ""

    def passed(self) -> bool:
        return self.at is not None and now() >= self.at

    def left(self) -> float:
        """Seconds to the deadline (inf without one; negative once passed)."""
        return math.inf if self.at is None else self.at - now()

    def earliest(self, other: "Deadline | None") -> "Deadline":
        if other is None or other.at is None:
            return self
        return other if self.at is None or other.at < self.at else self

    def describe(self) -> str:
        if self.at is None:
            return "no deadline"
        when = datetime.datetime.fromtimestamp(self.at).strftime("%Y-%m-%d %H:%M:%S")
        return f"{when} ({self.why})"


def parse_timeout(text: str) -> float:
    """'3600', '3600s', '90m', '1.5h' -> seconds (argparse type; > 0)."""
    s = str(text).strip().lower()
    unit = {"s": 1, "m": 60, "h": 3600}.get(s[-1:], None)
    try:
        value = float(s[:-1] if unit else s) * (unit or 1)
    except ValueError:
        raise ValueError(f"timeout {text!r}: give seconds, or a number with s, m or h (e.g. 3600, 90m, 2h)") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"timeout {text!r} must be a positive time")
    return value


def timeout_deadline(seconds: float | None) -> Deadline:
    """The deadline of one command started now with `--timeout seconds`."""
    if seconds is None:
        return Deadline()
    return Deadline(now() + float(seconds), f"--timeout {seconds:g} s")


def check_budget(budget: Mapping[str, Any], where: str) -> None:
    """The study file's `budget:` section: known keys, hours > 0, 0 < evolve <= 1 (errors name the field)."""
    unknown = sorted(set(budget) - set(BUDGET_KEYS))
    if unknown:
        raise ValueError(f"{where}: 'budget' has unknown option(s) {unknown} (allowed: {', '.join(BUDGET_KEYS)})")
    budget = {k: v for k, v in budget.items() if k in TIME_KEYS}  # a cost limit alone sets no deadline
    try:
        hours = float(budget.get("hours", 1.0))
        share = float(budget.get("evolve", DEFAULT_EVOLVE_SHARE))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'budget' hours and evolve must be numbers, got {dict(budget)!r}") from None
    if budget and "hours" not in budget:
        raise ValueError(f"{where}: 'budget' needs hours (e.g. budget: {{hours: 8}})")
    if not hours > 0:
        raise ValueError(f"{where}: 'budget.hours'={hours} must be > 0")
    if not 0 < share <= 1:
        raise ValueError(f"{where}: 'budget.evolve'={share} must be in (0, 1]: evolution's share of the hours")


def budget_start(attrs: Mapping[str, Any], set_attr: Any) -> float:
    """The budget clock's start: the recorded one, or now (recorded through `set_attr(key, value)`)."""
    start = attrs.get(START_ATTR)
    if start is None:
        start = now()
        set_attr(START_ATTR, start)
    return float(start)


def study_deadline(budget: Mapping[str, Any], attrs: Mapping[str, Any], set_attr: Any,
                   share: float = 1.0) -> Deadline:
    """The deadline `budget: {hours}` sets from the study's recorded start (recorded now on first use);
    `share` of the hours (evolve.study's evolution phase). No budget hours: no deadline."""
    if "hours" not in budget:
        return Deadline()
    hours = float(budget["hours"]) * share
    start = budget_start(attrs, set_attr)
    part = "" if share == 1.0 else f"{share:g} of "
    return Deadline(start + hours * 3600, f"budget: {part}{float(budget['hours']):g} h from the study's start")


def evolve_share(budget: Mapping[str, Any]) -> float:
    return float(budget.get("evolve", DEFAULT_EVOLVE_SHARE)) if "hours" in budget else 1.0


def file_deadline(path: Path | str, budget: Mapping[str, Any], share: float = 1.0) -> Deadline:
    """study_deadline with the start kept in a json file (evolve.study's run folder: phases/budget.json)."""
    path = Path(path)
    attrs = json.loads(path.read_text()) if path.is_file() else {}

    def set_attr(key: str, value: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**attrs, key: value}))
    return study_deadline(budget, attrs, set_attr, share)


def epoch_seconds(evolve_csv: Path | str) -> float:
    """Median seconds per epoch of the study's complete trials (nan when none): what a retrain epoch costs."""
    df = pd.read_csv(evolve_csv)
    done = df[(df.state == "COMPLETE") & (df.epochs > 0)] if {"state", "epochs", "seconds"} <= set(df) else df[:0]
    return float((done.seconds / done.epochs).median()) if len(done) else math.nan


def trim_retrain(plan: list[dict], left_s: float, run_s: float, slots: int) -> list[dict]:
    """The retrain runs that fit in `left_s` seconds at `run_s` each, `slots` at a time: the same first k seeds
    for every hyp (pairs stay paired), at least the best hyp's first seed while any time is left (the prune
    phase needs it), none when no time is left. An unknown run time keeps the whole plan."""
    if left_s <= 0:
        return []
    if not plan or not run_s > 0 or not math.isfinite(run_s) or not math.isfinite(left_s):
        return plan
    trials = list(dict.fromkeys(r["trial"] for r in plan))
    seeds = sorted({r["seed"] for r in plan})
    k = min(len(seeds), int(left_s // run_s) * max(slots, 1) // len(trials))
    if k == 0:
        return plan[:1]
    return [r for r in plan if r["seed"] in seeds[:k]]


def phase_deadlines(path: Path | str, budget: Mapping[str, Any], timeout: Deadline | None) -> tuple[Deadline, Deadline]:
    """evolve.study: (evolution's deadline, the study's) from `budget:` (start kept in `path`) and --timeout."""
    whole = file_deadline(path, budget).earliest(timeout)
    share = float(budget.get("evolve", DEFAULT_EVOLVE_SHARE))
    evolve = file_deadline(path, budget, share)
    if timeout is not None and timeout.at is not None:  # --timeout alone: evolution gets the same share of it
        t = now()
        evolve = evolve.earliest(Deadline(t + share * (timeout.at - t), f"{share:g} of {timeout.why}"))
    return evolve, whole


def retrain_within(plan: list[dict], deadline: Deadline, evolve_csv: Path | str, epochs: int,
                   slots: int) -> list[dict]:
    """The retrain plan trimmed to the time left before `deadline` (trim_retrain; a run's time estimated from
    the trials' seconds per epoch), saying what it drops."""
    if deadline.at is None:
        return plan
    run_s = epoch_seconds(evolve_csv) * epochs
    kept = trim_retrain(plan, deadline.left(), run_s, slots)
    if len(kept) < len(plan):
        LOGGER.warning(f"budget: {len(kept)} of {len(plan)} retrain run(s) fit before the deadline "
                       f"{deadline.describe()} (about {run_s:.0f} s each, {slots} at a time); the others are skipped")
    return kept
