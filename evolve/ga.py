"""YOLOv5's genetic algorithm as an Optuna sampler, with its flaws fixed and a first generation that explores.

Each child: parents = the top `parents` COMPLETE trials of the shared storage (read at every
sample, so all workers breed from the same pool); `single` picks one parent with probability
w = f - min(f) + 1e-6, `weighted` averages them by w; then every evolved gene is mutated with
probability `mp` by the factor (1 + gain * N(0,1) * U * sigma) clipped to [0.3, 3.0], re-drawn
until the child differs from the parent, and clipped to the gene's [low, high].

Fixes: a gene whose range starts at 0 (mixup, copy_paste, shear, flipud, ...) takes an additive
step (same draw, scaled by high - low) instead of a factor: a factor can never move it off 0, and
its 0.3 floor would never bring it back to 0 once above it; the clip at low = 0 switches it off
again. A gene with `log: true` (lr0, lrf) takes the same additive step in log space, scaled by
log(high / low): a factor of at most 3 that is a few percent wide in most draws never crossed a
decade of lr0 in a 12-trial study (bench.planted: the lr task's planted lr0 0.02 -> 0.002 was never
found), while the log step moves lr0 about 1.7x in a typical draw and 10x in the tail. The RNG is
seeded from (study seed, trial number) instead of the clock, so a study repeats
and two workers never draw the same child. Trials with identical genes (the base hyp's noise
seeds) are one parent whose fitness is their mean, so a repeated hyp is not bred from 3 times.

First generation: YOLOv5 mutates the base hyp, and as trial 0 (the base hyp) completes first every
later child descends from it, a few percent away. With `explore: N` the first N sampled trials
(enqueued ones, the base hyp's seeds and retries, not counted) are instead a Latin hypercube over
the whole space, each gene in its own scale (log genes in log): gene by gene, the N draws fall in N
different strata of its range, so N draws cover every gene's range where N random draws may bunch.
Their order is fixed by the study seed and each draw's jitter by (seed, trial number): repeatable.
The GA then breeds from the best of the base hyp and the exploration draws. Without completed
trials and past the exploration, the parent is the base hyp (`init='base'`, YOLOv5's first
generation) or the child is drawn uniformly in the space (`init='random'`).
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from evolve.space import Gene, Space, distributions, evolved

SELECTIONS = ("single", "weighted")


def mutate(x: np.ndarray, genes: Sequence[Gene], rng: np.random.Generator, mp: float = 0.8,
           sigma: float = 0.2, max_draws: int = 1000) -> np.ndarray:
    """Mutate parent vector `x` (one value per gene); the result differs from `x` unless `max_draws` fail."""
    gains = np.array([g.gain for g in genes], dtype=float)
    span = np.array([g.high - g.low for g in genes], dtype=float)
    log = np.array([g.log for g in genes], dtype=bool)
    log_span = np.where(log, np.log([g.high / g.low if g.log else 1.0 for g in genes]), 0.0)
    additive = ((x == 0) | (np.array([g.low for g in genes], dtype=float) == 0)) & ~log
    safe = np.where(log, np.maximum(x, [g.low if g.log else 1.0 for g in genes]), 1.0)  # log of a value > 0
    child = x.copy()
    for _ in range(max_draws):
        step = gains * (rng.random(len(genes)) < mp) * rng.standard_normal(len(genes)) * rng.random() * sigma
        moved = np.where(additive, x + step * span, x * np.clip(step + 1.0, 0.3, 3.0))
        moved = np.where(log, np.exp(np.log(safe) + step * log_span), moved)
        child = np.array([g.clip(v) for g, v in zip(genes, moved)], dtype=float)
        if np.any(child != x):
            break
    return child


def explore_draw(genes: Sequence[Gene], seed: int, index: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `index` (0 <= index < n) of an n-point Latin hypercube over the genes' ranges (log genes in log
    scale): per gene a permutation of the n strata fixed by `seed` gives this draw's stratum, `rng` its place
    inside it. Draws 0..n-1 of one seed take n different strata of every gene."""
    if not 0 <= index < n:
        raise ValueError(f"exploration draw {index} outside 0..{n - 1}")
    # one stream per study seed, so every worker gets the same strata (0x1A7: any constant; the stream is trial
    # 423's mutation stream too, harmlessly: one draws strata, the other steps)
    perm = np.random.default_rng([int(seed), 0x1A7]).permuted(np.tile(np.arange(n), (len(genes), 1)), axis=1)
    u = (perm[:, index] + rng.random(len(genes))) / n
    out = []
    for g, q in zip(genes, u):
        v = math.exp(math.log(g.low) + q * math.log(g.high / g.low)) if g.log else g.low + q * (g.high - g.low)
        out.append(g.clip(v))
    return np.array(out, dtype=float)


def select_parent(values: np.ndarray, fitness: np.ndarray, selection: str, rng: np.random.Generator) -> np.ndarray:
    """Pick (single) or blend (weighted) parents, rows of `values`, weighted by w = f - min(f) + 1e-6."""
    w = fitness - fitness.min() + 1e-6
    if selection == "single":
        return values[rng.choice(len(values), p=w / w.sum())].copy()
    if selection == "weighted":
        return (values * w[:, None]).sum(0) / w.sum()
    raise ValueError(f"GA selection must be one of {SELECTIONS}, got {selection!r}")


class GASampler(BaseSampler):
    """Relative sampler over the evolved genes of `space`; fixed genes are never suggested."""

    def __init__(self, space: Space, base_hyp: Mapping[str, float], seed: int = 0, parents: int = 5,
                 selection: str = "single", mp: float = 0.8, sigma: float = 0.2, init: str = "base",
                 explore: int = 0) -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"GA selection must be one of {SELECTIONS}, got {selection!r}")
        if init not in ("base", "random"):
            raise ValueError(f"GA init must be 'base' or 'random', got {init!r}")
        if parents < 1:
            raise ValueError(f"GA parents must be >= 1, got {parents}")
        if explore < 0 or explore != int(explore):
            raise ValueError(f"GA explore must be a whole number >= 0 (exploration draws), got {explore!r}")
        self.genes = evolved(space)
        self.base = np.array([float(base_hyp[g.name]) for g in self.genes], dtype=float)
        self.seed, self.n_parents, self.selection = int(seed), int(parents), selection
        self.mp, self.sigma, self.init, self.explore = float(mp), float(sigma), init, int(explore)
        self._space = distributions(space)

    def rng(self, trial_number: int) -> np.random.Generator:
        """Deterministic per (study seed, trial number): repeatable, and distinct across trials."""
        return np.random.default_rng([self.seed, int(trial_number)])

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def parents(self, study: optuna.Study) -> tuple[np.ndarray, np.ndarray]:
        """Gene values and fitness (higher = better) of the top COMPLETE trials, best first."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and np.isfinite(t.value)]
        sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
        groups: dict[tuple, list] = {}  # identical genes (noise seeds of one hyp): one parent, mean fitness
        for t in sorted(done, key=lambda t: t.number):
            genes = tuple(float(t.params.get(g.name, b)) for g, b in zip(self.genes, self.base))
            groups.setdefault(genes, []).append(t)
        ranked = sorted(((sign * float(np.mean([t.value for t in ts])), ts[0].number, genes)
                         for genes, ts in groups.items()), key=lambda r: (-r[0], r[1]))
        top = ranked[: self.n_parents]
        values = np.array([genes for _, _, genes in top], dtype=float).reshape(len(top), len(self.genes))
        return values, np.array([f for f, _, _ in top], dtype=float)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        rng = self.rng(trial.number)
        draw = self.draw_index(study, trial)
        if draw < self.explore:
            return self.params(explore_draw(self.genes, self.seed, draw, self.explore, rng), search_space)
        values, fitness = self.parents(study)
        if len(values):
            parent = select_parent(values, fitness, self.selection, rng)
        elif self.init == "base":
            parent = self.base.copy()
        else:
            sampler = RandomSampler(seed=int(rng.integers(2**31)))
            return {n: sampler.sample_independent(study, trial, n, d) for n, d in search_space.items()}
        return self.params(mutate(parent, self.genes, rng, self.mp, self.sigma), search_space)

    def params(self, child: np.ndarray, search_space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        out = {g.name: (int(v) if g.int else float(v)) for g, v in zip(self.genes, child)}
        return {n: out[n] for n in search_space if n in out}

    @staticmethod
    def draw_index(study: optuna.Study, trial: FrozenTrial) -> int:
        """How many sampled trials precede this one (trial numbers are given out in order, so every worker counts
        the same); enqueued trials (the base hyp's seeds, retries: `fixed_params`) are not sampled."""
        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.number < trial.number and "fixed_params" not in t.system_attrs)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        # Only reached for a param outside the space (a user's custom suggest): uniform, still seeded.
        seed = int(self.rng(trial.number).integers(2**31)) + zlib.crc32(param_name.encode()) % 1000
        return RandomSampler(seed=seed).sample_independent(study, trial, param_name, param_distribution)
