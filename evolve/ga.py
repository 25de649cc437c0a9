"""YOLOv5's genetic algorithm as an Optuna sampler, with its two flaws fixed.

Each child: parents = the top `parents` COMPLETE trials of the shared storage (read at every
sample, so all workers breed from the same pool); `single` picks one parent with probability
w = f - min(f) + 1e-6, `weighted` averages them by w; then every evolved gene is mutated with
probability `mp` by the factor (1 + gain * N(0,1) * U * sigma) clipped to [0.3, 3.0], re-drawn
until the child differs from the parent, and clipped to the gene's [low, high].

Fixes: a gene whose range starts at 0 (mixup, copy_paste, shear, flipud, ...) takes an additive
step (same draw, scaled by high - low) instead of a factor: a factor can never move it off 0, and
its 0.3 floor would never bring it back to 0 once above it; the clip at low = 0 switches it off
again. The RNG is seeded from (study seed, trial number) instead of the clock, so a study repeats
and two workers never draw the same child. Trials with identical genes (the base hyp's noise
seeds) are one parent whose fitness is their mean, so a repeated hyp is not bred from 3 times.
While no trial has completed, the parent is the base hyp (`init='base'`, YOLOv5's first
generation) or the child is drawn uniformly in the space (`init='random'`).
"""
from __future__ import annotations

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
    additive = (x == 0) | (np.array([g.low for g in genes], dtype=float) == 0)
    child = x.copy()
    for _ in range(max_draws):
        step = gains * (rng.random(len(genes)) < mp) * rng.standard_normal(len(genes)) * rng.random() * sigma
        moved = np.where(additive, x + step * span, x * np.clip(step + 1.0, 0.3, 3.0))
        child = np.array([g.clip(v) for g, v in zip(genes, moved)], dtype=float)
        if np.any(child != x):
            break
    return child


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
                 selection: str = "single", mp: float = 0.8, sigma: float = 0.2, init: str = "base") -> None:
        if selection not in SELECTIONS:
            raise ValueError(f"GA selection must be one of {SELECTIONS}, got {selection!r}")
        if init not in ("base", "random"):
            raise ValueError(f"GA init must be 'base' or 'random', got {init!r}")
        if parents < 1:
            raise ValueError(f"GA parents must be >= 1, got {parents}")
        self.genes = evolved(space)
        self.base = np.array([float(base_hyp[g.name]) for g in self.genes], dtype=float)
        self.seed, self.n_parents, self.selection = int(seed), int(parents), selection
        self.mp, self.sigma, self.init = float(mp), float(sigma), init
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
        values, fitness = self.parents(study)
        if len(values):
            parent = select_parent(values, fitness, self.selection, rng)
        elif self.init == "base":
            parent = self.base.copy()
        else:
            sampler = RandomSampler(seed=int(rng.integers(2**31)))
            return {n: sampler.sample_independent(study, trial, n, d) for n, d in search_space.items()}
        child = mutate(parent, self.genes, rng, self.mp, self.sigma)
        out = {g.name: (int(v) if g.int else float(v)) for g, v in zip(self.genes, child)}
        return {n: out[n] for n in search_space if n in out}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        # Only reached for a param outside the space (a user's custom suggest): uniform, still seeded.
        seed = int(self.rng(trial.number).integers(2**31)) + zlib.crc32(param_name.encode()) % 1000
        return RandomSampler(seed=seed).sample_independent(study, trial, param_name, param_distribution)
