"""Sampler factory: the GA or one of Optuna's samplers, all over the same search space."""
from __future__ import annotations

import socket
import warnings
import zlib
from typing import Any, Iterable, Mapping

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from evolve.ga import GASampler
from evolve.ledger import OWNER
from evolve.space import Space, base_params

SAMPLERS = ("ga", "tpe", "cmaes", "random", "nsga2")


def make_sampler(name: str, space: Space, base_hyp: Mapping[str, float], seed: int = 0, worker: int = 0,
                 ga: Mapping[str, Any] | None = None, host: str | None = None, draws: int = 0) -> BaseSampler:
    """Build sampler `name` for one worker process.

    The GA seeds from (seed, trial number), so every worker uses the same seed. Optuna's samplers
    keep a per-process RNG, so each worker gets its own seed from (study seed, host, worker index):
    workers that start together, on one machine or several joining one study, must not propose
    identical trials. `draws`, the trials this host and worker index already drew in the study
    (`prior_draws`), joins the seed: a resumed worker would otherwise replay its first stream and spend the
    resumed budget on duplicates (random search, TPE's random start-up, NSGA-II's first generation); a fresh
    study (0 draws) repeats its seeds and trials.
    """
    wseed = worker_seed(seed, worker, host, draws)
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


def worker_seed(seed: int, worker: int, host: str | None = None, draws: int = 0) -> int:
    """A sampler seed per (study seed, machine, worker, draws so far): distinct across machines and resumes,
    repeatable for the same history (draws = 0: the seed of a fresh study)."""
    host = socket.gethostname() if host is None else host
    resume = zlib.crc32(f"resume {int(draws)}".encode()) if draws else 0
    return (int(seed) + 1000 * int(worker) + 7919 * zlib.crc32(host.encode()) + 104729 * resume) % 2**31


def prior_draws(trials: Iterable[FrozenTrial], worker: int, host: str | None = None) -> int:
    """How many trials this host and worker index asked its sampler for (not enqueued ones: the base hyp's
    seeds, retries), from the owner every trial records when it is asked (evolve.ledger.claim_owner)."""
    host = socket.gethostname() if host is None else host
    return sum(1 for t in trials if "fixed_params" not in t.system_attrs
               and (t.system_attrs.get(OWNER) or {}).get("host") == host
               and (t.system_attrs.get(OWNER) or {}).get("worker") == int(worker))


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
