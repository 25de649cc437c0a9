"""The noise floor of a study and whether a difference stands above it.

Seed noise: the base hyp trained with K seeds (trial 0 with the study seed, then the `noise_seeds`
trials); their fitness mean and sample standard deviation are the floor every other trial is read
against: gain_sd = (fitness - mean) / sd.

A retrained winner is compared with the base hyp retrained with the same seeds (same data order and
initial noise per seed: a paired comparison). The gain is above noise when the mean paired
difference exceeds twice its standard error (mean > 2 * sd / sqrt(n)); with n seeds that is roughly a
one-sided test at the 5% level for n >= 4 and conservative below (n = 2 needs the two differences
to agree closely).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

from optuna.trial import FrozenTrial, TrialState

__all__ = ["NoiseFloor", "noise_floor", "is_noise_trial", "summarize", "paired_gain"]

NOISE_ATTR = "noise_seed"  # user attr of a base-hyp trial that measures seed noise (trial 0 has `base` only)


@dataclass
class NoiseFloor:
    mean: float
    sd: float
    n: int
    trials: list[int]

    def gain_sd(self, value: float) -> float:
        """(value - mean) / sd; nan while the floor is unknown (fewer than 2 seeds or sd 0)."""
        if self.n < 2 or not self.sd > 0 or not math.isfinite(value):
            return math.nan
        return (value - self.mean) / self.sd

    def as_dict(self) -> dict:
        return asdict(self)


def is_noise_trial(t: FrozenTrial) -> bool:
    """Trial 0 (the base hyp at the study seed) and the base hyp's other seeds."""
    return bool(t.user_attrs.get("base")) and (t.number == 0 or NOISE_ATTR in t.user_attrs)


def noise_floor(trials: Iterable[FrozenTrial]) -> NoiseFloor | None:
    """Mean and sd of the complete noise trials' values; None with fewer than 2."""
    done = [t for t in trials if is_noise_trial(t) and t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    if len(done) < 2:
        return None
    values = [float(t.value) for t in done]
    return NoiseFloor(statistics.fmean(values), statistics.stdev(values), len(values), [t.number for t in done])


def summarize(values: Sequence[float]) -> dict:
    """mean, sd (sample; 0 for one value) and n of some runs' fitness."""
    vals = [float(v) for v in values if math.isfinite(float(v))]
    if not vals:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def paired_gain(candidate: Mapping[int, float], base: Mapping[int, float]) -> dict:
    """Per-seed differences candidate - base over the seeds both have: mean, sd, standard error, verdict."""
    seeds = sorted(set(candidate) & set(base))
    diffs = [float(candidate[s]) - float(base[s]) for s in seeds]
    out = {"seeds": seeds, "diffs": diffs, **{f"diff_{k}": v for k, v in summarize(diffs).items()}}
    n = out["diff_n"]
    out["diff_se"] = out["diff_sd"] / math.sqrt(n) if n > 1 else math.nan
    out["above_noise"] = bool(n > 1 and out["diff_mean"] > 2 * out["diff_se"])
    return out
