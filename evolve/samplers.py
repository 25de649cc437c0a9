"""Sampler factory: the GA or one of Optuna's samplers, all over the same search space."""
from __future__ import annotations

import socket
import warnings
import zlib
from typing import Any, Mapping

import optuna
from optuna.samplers import BaseSampler

from evolve.ga import GASampler
from evolve.space import Space, base_params

SAMPLERS = ("ga", "tpe", "cmaes", "random", "nsga2")


def make_sampler(name: str, space: Space, base_hyp: Mapping[str, float], seed: int = 0, worker: int = 0,
                 ga: Mapping[str, Any] | None = None, host: str | None = None) -> BaseSampler:
    """Build sampler `name` for one worker process.

    The GA seeds from (seed, trial number), so every worker uses the same seed. Optuna's samplers
    keep a per-process RNG, so each worker gets its own seed from (study seed, host, worker index):
    workers that start together, on one machine or several joining one study, must not propose
    identical trials; the same host and index repeat their seed.
    """
    wseed = worker_seed(seed, worker, host)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "ga":
        return GASampler(space, base_hyp, seed=seed, **dict(ga or {}))
    if name == "tpe":
        # constant_liar: running trials count as bad, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=wseed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=wseed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=wseed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401  optional package: only optuna's CmaEsSampler needs it
        except ImportError:
            raise ValueError("sampler 'cmaes' needs the `cmaes` package: pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(x0=base_params(space, base_hyp), seed=wseed)
    raise ValueError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")


def worker_seed(seed: int, worker: int, host: str | None = None) -> int:
    """A sampler seed per (study seed, machine, worker): distinct across machines, repeatable on one."""
    host = socket.gethostname() if host is None else host
    return (int(seed) + 1000 * int(worker) + 7919 * zlib.crc32(host.encode())) % 2**31


def make_pruner(name: str, epochs: int, warmup: int | None = None) -> optuna.pruners.BasePruner:
    """none | median (stop below the median of earlier trials at the same epoch) | hyperband.

    Neither may stop a trial in its first `warmup` epochs (default: half the trial): first-epoch
    fitness mostly measures the warmup and the seed, not the hyp.
    """
    warmup = max(int(epochs) // 2, 1) if warmup is None else int(warmup)
    if name in (None, "none"):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(warmup, 1), max_resource=max(int(epochs), 1),
                                              reduction_factor=3)
    raise ValueError(f"unknown pruner {name!r} (choose from none, median, hyperband)")
