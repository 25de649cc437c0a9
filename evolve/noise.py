"""The noise floor of a study and whether a difference stands above it.

Seed noise: the base hyp trained with K seeds (trial 0 with the study seed, then the `noise_seeds`
trials); their fitness mean and sample standard deviation are the floor every other trial is read
against: gain_sd = (fitness - mean) / sd. The best of N searched trials is read against the expected best
of N noise draws (`expected_best_sd`): with no hyp better than the base, the best of 9 trials still
stands about +1.5 sd above the floor.

A retrained winner is compared with the base hyp retrained with the same seeds (same data order and
initial noise per seed: a paired comparison). One candidate alone (`paired_gain`): a one-sided paired t-test
at ALPHA = 5%, t = mean / (sd / sqrt(n)) against Student's t with n - 1 degrees of freedom (the critical
value is 6.31 for n = 2, 2.92 for n = 3, 2.13 for n = 5: with few seeds only a large, consistent gain
counts; twice the standard error, the rule before, let 15% of equal hyps through at n = 2).

The study's candidate is the best retrain mean among k candidates, chosen on the very retrains it is then
tested on; the best of k equal hyps beats the base more often than one does (k = 3, 3 seeds: 18% at the
two-standard-error rule, 9% at an uncorrected t-test). `compare_to_base` tests every candidate and adjusts
the k p-values by Holm's step-down method, which holds the chance of any false "above noise" among them at
5% whatever their dependence; the chosen one is above noise when its adjusted p-value is below 5%. Holm
rather than fresh seeds for the test: every retrain serves both the choice and the test, at no extra
training, and with k = 1 it is the plain t-test.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

from optuna.trial import FrozenTrial, TrialState

from evolve.objectives import fitness_value, has_fitness
from evolve.stats import expected_max_normal, holm, t_ppf, t_sf

__all__ = ["ALPHA", "NOISE_ATTR", "NoiseFloor", "noise_floor", "noise_trials", "is_noise_trial", "summarize", "paired_gain", "compare_to_base",
           "expected_best_sd"]

ALPHA = 0.05  # one-sided level of every "above noise" verdict

NOISE_ATTR = "noise_seed"  # user attr of a base-hyp trial: which noise seed it measures (0: trial 0's, the study seed)


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
    """A trial of the base hyp: trial 0 (the study seed) and the other noise seeds, and any retry or late result
    of one, which keeps the `base`, `noise_seed` and `train_seed` attrs (evolve.ledger.CARRIED_ATTRS). Only
    base-hyp trials carry `base`, so it is the whole test: a retry of trial 0 has another number but is still
    trial 0's seed (older studies gave trial 0 no `noise_seed`)."""
    return bool(t.user_attrs.get("base"))


def noise_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The complete noise trials with a finite value, one per seed (`train_seed`): where a seed was measured
    twice (a late result kept beside its retry, in a study from before evolve.ledger.keep_result dropped
    those), the earlier trial counts."""
    seen: set = set()
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        if not (is_noise_trial(t) and t.state == TrialState.COMPLETE and has_fitness(t)):
            continue
        seed = t.user_attrs.get("train_seed", t.user_attrs.get(NOISE_ATTR, ("trial", t.number)))
        if seed not in seen:
            seen.add(seed)
            out.append(t)
    return out


def noise_floor(trials: Iterable[FrozenTrial]) -> NoiseFloor | None:
    """Mean and sd of the noise trials' values (one per seed); None with fewer than 2."""
    done = noise_trials(trials)
    if len(done) < 2:
        return None
    values = [float(fitness_value(t)) for t in done]
    return NoiseFloor(statistics.fmean(values), statistics.stdev(values), len(values), [t.number for t in done])


def summarize(values: Sequence[float]) -> dict:
    """mean, sd (sample; 0 for one value) and n of some runs' fitness."""
    vals = [float(v) for v in values if math.isfinite(float(v))]
    if not vals:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def paired_gain(candidate: Mapping[int, float], base: Mapping[int, float], alpha: float = ALPHA) -> dict:
    """Per-seed differences candidate - base over the seeds both have: mean, sd, standard error, and a
    one-sided paired t-test (t, df = n - 1, p, the critical t at `alpha`); above_noise when p < alpha."""
    seeds = sorted(set(candidate) & set(base))
    diffs = [float(candidate[s]) - float(base[s]) for s in seeds]
    out = {"seeds": seeds, "diffs": diffs, **{f"diff_{k}": v for k, v in summarize(diffs).items()}}
    n = out["diff_n"]
    out["diff_se"] = out["diff_sd"] / math.sqrt(n) if n > 1 else math.nan
    out.update(t_test(out["diff_mean"], out["diff_se"], n, alpha))
    out["above_noise"] = bool(out["p"] < alpha)  # False for a nan p (fewer than 2 seeds)
    return out


def t_test(mean: float, se: float, n: int, alpha: float = ALPHA) -> dict:
    """One-sided test of mean > 0 from n paired differences: t, df, p = P(T_{n-1} > t), the critical t."""
    if n < 2 or not math.isfinite(mean) or not se >= 0:
        return {"t": math.nan, "df": max(n - 1, 0), "p": math.nan, "t_crit": math.nan, "alpha": alpha}
    t = mean / se if se > 0 else (math.inf if mean > 0 else -math.inf if mean < 0 else 0.0)
    return {"t": t, "df": n - 1, "p": t_sf(t, n - 1), "t_crit": t_ppf(1 - alpha, n - 1), "alpha": alpha}


def compare_to_base(candidates: Mapping[int, Mapping[int, float]], base: Mapping[int, float],
                    alpha: float = ALPHA) -> dict[int, dict]:
    """paired_gain of every candidate (trial -> {seed: value}) over the base, with Holm's adjustment over
    them: each result gains `p_holm` and `tested` (k), and its `above_noise` becomes p_holm < alpha (the
    uncorrected verdict stays as `above_noise_alone`)."""
    out = {trial: paired_gain(values, base, alpha) for trial, values in candidates.items()}
    adjusted = holm([g["p"] for g in out.values()])
    for g, p_holm in zip(out.values(), adjusted):
        g["above_noise_alone"] = g["above_noise"]
        g["p_holm"], g["tested"] = p_holm, len(out)
        g["above_noise"] = bool(p_holm < alpha)
    return out


def expected_best_sd(n: int) -> float:
    """The expected best of n noise draws in sd units (E[max of n standard normals]): what the best of n
    searched trials reaches in gain_sd with no hyp better than the base (nan for n < 1). The floor's own mean
    and sd are estimates from a few seeds, so real spreads are wider still."""
    return expected_max_normal(n)
