"""Do the trials predict full training? The study measures its own transfer.

A trial trains for a few epochs; the hyp it ranks first is then trained at the retrain budget. That choice
is only as good as the agreement of the two rankings, which short trials do not guarantee. So the retrain
phase also re-trains `retrain: transfer` trials spread evenly over the ranking of the searched trials
(`spread_picks`, one seed each: the first seed of the candidates' runs, so every candidate's runs count
too), and the study reports Spearman's rank correlation between each retrained trial's value in the search
and its retrained value (the mean over its seeds), over every retrained hyp, with its n.

Spearman's rho is Pearson's correlation of the two rank vectors, tied values given the average of the ranks
they span (pandas' rank(method="average"); no scipy). With a candidate ranked first by both it is +1, with
the order reversed -1; undefined (nan) when either side is all ties.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from core.hyp import HYP_KEYS

__all__ = ["MIN_N", "MIN_RHO", "TRANSFER_ROLE", "spearman", "spread_picks", "transfer_line", "transfer_summary",
           "transfer_trials"]

TRANSFER_ROLE = "transfer"  # retrain.csv's role of a run that measures transfer (never a candidate for pruning)

# When the ranking is not to be trusted. MIN_N: with 3 retrained hyps the two rankings agree perfectly by chance
# once in 3! = 6 studies; with 4, once in 24 (under 5%): fewer than 4 points cannot show anything. MIN_RHO: below
# 0.5 the trial ranking accounts for under a quarter of the variance of the retrained ranking (rho^2 < 0.25),
# so the top trial is little more likely than any other to be the best at full training. The bar is low on
# purpose (a rho of 0.5 over 6 points is not even significant: 0.83 would be at 5%): the warning flags a
# ranking that is plainly not predictive; passing it is not proof that the ranking transfers.
MIN_N = 4
MIN_RHO = 0.5
LOW_RHO = "your trials do not predict full training: lengthen trials or change the objective"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of paired values (ties: average ranks); nan for fewer than 2 pairs or when
    either side has no spread."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return math.nan
    rx = pd.Series(x, dtype="float64").rank(method="average").to_numpy()
    ry = pd.Series(y, dtype="float64").rank(method="average").to_numpy()
    dx, dy = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    return float(np.dot(dx, dy)) / norm if norm > 0 else math.nan


def spread_picks(ranking: Sequence[int], taken: Iterable[int], count: int) -> list[int]:
    """`count` items of `ranking` (best first) at evenly spaced ranks, avoiding `taken` (the top-k already
    retrained), best first. The targets are ranks j (N - 1) / count for j = 1 .. count, so together with the
    top candidate they span the whole ranking down to the last; a target that is taken or already picked moves
    to the nearest free rank (the better one on a tie)."""
    taken = set(taken)
    free = [i for i, item in enumerate(ranking) if item not in taken]
    if count <= 0 or not free:
        return []
    if count >= len(free):
        return [ranking[i] for i in free]
    n, chosen = len(ranking), []
    for j in range(1, count + 1):
        target = math.floor(j * (n - 1) / count + 0.5)
        best = min((i for i in free if i not in chosen), key=lambda i: (abs(i - target), i))
        chosen.append(best)
    return [ranking[i] for i in sorted(chosen)]


def _hyp_key(row: pd.Series) -> tuple:
    return tuple(round(float(row[k]), 12) for k in HYP_KEYS)


def transfer_trials(searched: pd.DataFrame, planned: Sequence[int], trials: pd.DataFrame, count: int) -> list[int]:
    """The trial numbers to retrain for transfer: `searched` is evolve.csv's searched trials best first,
    `planned` the trials already in the retrain plan (top-k, base), `trials` evolve.csv indexed by number.
    A trial whose hyp equals a planned one or a better-ranked trial's is left out of the ranking: retrained
    with the same seed it would repeat that run's value and add a tie, not information."""
    seen = {_hyp_key(trials.loc[n]) for n in planned}
    ranking = []
    for number, row in searched.set_index("number").iterrows():
        key = _hyp_key(row)
        if number in planned:
            ranking.append(int(number))
        elif key not in seen:
            seen.add(key)
            ranking.append(int(number))
    return spread_picks(ranking, planned, count)


def transfer_summary(retrain: pd.DataFrame) -> dict[str, Any]:
    """From retrain.csv: each retrained hyp's value in the search and retrained (mean over its seeds, by the
    study's objective column as the choice reads it), Spearman's rho over them with n, and a warning when the
    ranking is not to be trusted (None when it is)."""
    value = "objective" if "objective" in retrain else "fitness"
    points = []
    for trial, g in retrain.groupby("trial", sort=False):
        vals = pd.to_numeric(g[value], errors="coerce").dropna()
        searched = float(g.trial_fitness.iloc[0])
        if len(vals) and math.isfinite(searched):
            points.append({"trial": int(trial), "role": str(g.role.iloc[0]), "seeds": [int(s) for s in g.seed],
                           "trial_fitness": searched, "retrained": float(vals.mean()),
                           "retrained_sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0})
    rho = spearman([p["trial_fitness"] for p in points], [p["retrained"] for p in points])
    return {"rho": rho, "n": len(points), "value": value, "min_rho": MIN_RHO, "min_n": MIN_N,
            "spread": sum(p["role"] == TRANSFER_ROLE for p in points), "points": points,
            "warning": _warning(rho, len(points))}


def _warning(rho: float, n: int) -> str | None:
    if n < MIN_N:
        return (f"too few retrained trials to tell whether your trials predict full training (n = {n}, needs "
                f">= {MIN_N}): raise retrain: transfer")
    if math.isnan(rho):
        return "the rank correlation is undefined (every trial or every retrain has the same value)"
    if rho < MIN_RHO:
        return f"{LOW_RHO} (Spearman rho {rho:+.2f} < {MIN_RHO} over {n} retrained trials)"
    return None


def transfer_line(t: dict[str, Any] | None) -> str | None:
    """One plain line for the console and the reports (None without a retrain)."""
    if not t:
        return None
    rho = "undefined" if t.get("rho") is None or math.isnan(t["rho"]) else f"{t['rho']:+.2f}"
    line = (f"transfer: Spearman rho {rho} between trial and retrained {t.get('value', 'fitness')} over n = {t['n']} "
            f"retrained trials ({t.get('spread', 0)} spread over the ranking)")
    if t.get("warning"):
        return f"{line}; WARNING: {t['warning']}"
    return f"{line}; rho >= {t.get('min_rho', MIN_RHO)}: the trial ranking carries over to full training"
