"""Prune to a budget: the smallest global share whose pruned model meets a GFLOPs, parameter or latency target.

The pruned model's cost does not grow with the share (a larger share raises the |gamma| threshold, every
group keeps as many channels or fewer, and rounding up to the conv block keeps that order), so the shares
that meet a target form an interval [s*, hi]. Bisection on the share narrows in on s*: each candidate is the
real pruned model (built by the caller from the sparse-trained one, layer removal included), measured. The
search ends at a candidate within the tolerance on both sides of the target, or when the interval is
narrower than `resolution` (one channel of the sorted |gamma|s: the cost is a step function of the share).
The least pruning found that meets the budget is kept, as it keeps the most accuracy.

Latency is noisy: a candidate "meets" a target when its measured cost is at most target x (1 + tolerance);
the run's final table re-times the chosen model beside the others and shows its spread. A target that even
the largest share misses raises TargetUnreachable naming the closest figure; the pipeline then stops
before the channel stage (the earlier stages' checkpoints are kept, so a rerun with a reachable target
reuses them).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, TypeVar

from torch import nn

from core.model.info import model_gflops, param_count
from prune.graph import trace
from prune.layers import remove_shortcuts
from prune.masks import MaskOptions, PruneOptionError, compute_masks, threshold
from prune.surgery import prune_channels

__all__ = ["METRICS", "TARGET_FIELDS", "SearchResult", "Target", "TargetUnreachable", "fewest_shortcuts", "find_share", "largest_share",
           "prunable_count", "pruned_at", "search_share", "target_cost", "target_from"]

LOGGER = logging.getLogger(__name__)
M = TypeVar("M")

METRICS = {"GFLOPs": "{:.4f} GFLOPs", "params": "{:,.0f} params", "latency_ms": "{:.2f} ms"}
# options -> the metric they target; a speedup S is a latency target: the start model's own latency / S
TARGET_FIELDS = {"target_gflops": "GFLOPs", "target_params": "params", "target_latency_ms": "latency_ms",
                 "target_speedup": "latency_ms"}


class TargetUnreachable(PruneOptionError):
    """Even the largest share leaves the model above its target; `closest` is the figure it leaves."""

    def __init__(self, message: str, closest: float = math.nan):
        super().__init__(message)
        self.closest = closest


@dataclass(frozen=True)
class Target:
    metric: str  # a METRICS key
    value: float
    tolerance: float = 0.01  # share of the target a candidate may exceed it by and still meet it

    def __post_init__(self):
        if self.metric not in METRICS:
            raise PruneOptionError(f"target metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        if not self.value > 0:
            raise PruneOptionError(f"--target-{self.flag} {self.value}: must be > 0")
        if not 0 <= self.tolerance < 1:
            raise PruneOptionError(f"--target-tolerance {self.tolerance} is outside [0, 1)")

    @property
    def flag(self) -> str:
        return {"GFLOPs": "gflops", "params": "params", "latency_ms": "latency-ms"}[self.metric]

    def met(self, cost: float) -> bool:
        return cost <= self.value * (1.0 + self.tolerance)

    def close(self, cost: float) -> bool:
        """Met, and within the tolerance below the target too: pruning less could not gain more than that."""
        return self.met(cost) and cost >= self.value * (1.0 - self.tolerance)

    def show(self, cost: float) -> str:
        return METRICS[self.metric].format(cost)


@dataclass
class SearchResult:
    target: Target
    share: float  # the chosen global share
    achieved: float  # the cost of the model pruned at `share`
    trials: list[tuple[float, float]] = field(default_factory=list)  # (share, cost) of every candidate, in order

    @property
    def met(self) -> bool:
        return self.target.met(self.achieved)

    def as_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


def search_share(build: Callable[[float], M], cost: Callable[[M], float], target: Target, hi: float,
                 resolution: float = 1e-3, max_steps: int = 20) -> SearchResult:
    """The smallest share in [0, hi] whose model `build(share)` meets `target` by `cost(model)`, by bisection.

    Raises TargetUnreachable when build(hi) misses it. `cost` may be a timer (it is called once per candidate)."""
    trials: list[tuple[float, float]] = []

    def evaluate(share: float) -> float:
        c = float(cost(build(share)))
        trials.append((share, c))
        LOGGER.info(f"target: share {share:.4f} -> {target.show(c)}"
                    f" ({'meets' if target.met(c) else 'misses'} {target.show(target.value)})")
        return c

    at_hi = evaluate(hi)
    if not target.met(at_hi):
        raise TargetUnreachable(
            f"--target-{target.flag} {target.value:g} cannot be met: the largest share {hi:.3f} prunes the model to "
            f"{target.show(at_hi)} ({at_hi / target.value - 1:+.1%} of the target); that is the closest achievable "
            f"here; remove more shortcut blocks (--shortcuts), lower --layer-keep or --round-to, or raise the target",
            at_hi)
    at_lo = evaluate(0.0)
    if target.met(at_lo):
        return SearchResult(target, 0.0, at_lo, trials)
    lo = 0.0
    for _ in range(max_steps):
        if hi - lo <= resolution or target.close(at_hi):
            break
        mid = (lo + hi) / 2
        c = evaluate(mid)
        if target.met(c):
            hi, at_hi = mid, c
        else:
            lo = mid
    return SearchResult(target, hi, at_hi, trials)


def target_from(opts, start_ms: float | None = None) -> Target | None:
    """The target that options name (target_gflops, target_params, target_latency_ms or target_speedup > 0), else
    None. A speedup S is the latency `start_ms` / S: the start model timed where the candidates will be
    (Pipeline.resolve_target), so it needs `start_ms`."""
    for key, metric in TARGET_FIELDS.items():
        value = float(getattr(opts, key, 0) or 0)
        if value:
            if key == "target_speedup":
                if start_ms is None:
                    raise ValueError("target_from: --target-speedup needs the start model's latency (start_ms)")
                value = start_ms / value
            return Target(metric, value, opts.target_tolerance)
    return None


def pruned_at(model: nn.Module, share: float, masks: MaskOptions, shortcuts: int) -> nn.Module:
    """The chain's compact model at `share`: the channel stage one-shot, then the layer stage's shortcut removal."""
    kept, _ = compute_masks(trace(model), replace(masks, global_percent=share))
    pruned = prune_channels(model, kept)
    return remove_shortcuts(pruned, shortcuts)[0] if shortcuts else pruned


def largest_share(model: nn.Module, layer_keep: float) -> float:
    """The largest share compute_masks accepts: one channel short of all with a per-layer floor, else (strict,
    --layer-keep 0) the share at which the first coupled group would empty."""
    graph = trace(model)
    n = prunable_count(model)
    return (n - 1) / n if layer_keep > 0 else threshold(graph, 0.0).safe_percent


def prunable_count(model: nn.Module) -> int:
    """BN gammas the global threshold ranks: one share step of the search is one of them."""
    return sum(m.bn.weight.numel() for m in trace(model).convs.values())


def target_cost(model: nn.Module, target: Target, imgsz: int, timer: Callable[[nn.Module], float] | None):
    if target.metric == "latency_ms" and timer is None:
        raise PruneOptionError("a latency target needs a timer")
    cost = {"GFLOPs": lambda m: model_gflops(m, imgsz), "params": param_count,
            "latency_ms": timer}[target.metric]
    if target.metric == "GFLOPs" and math.isnan(cost(model)):
        raise PruneOptionError("--target-gflops needs thop to count GFLOPs (pip install thop)")
    return cost


def fewest_shortcuts(model: nn.Module, target: Target, masks: MaskOptions, available: int, imgsz: int,
                     timer: Callable[[nn.Module], float] | None = None) -> tuple[int, list[tuple[int, float]]]:
    """`--shortcuts auto`: the fewest shortcut blocks (0, 1, ... `available`) whose removal, with the largest
    share, lets the model meet `target`; and (blocks, cost) of each count tried. Depth is removed only as far as
    the budget needs it: at equal latency a deeper, narrower model kept more accuracy (bench/results/deploy.md).
    None meeting it raises TargetUnreachable with the closest figure (every block removed)."""
    cost, top, tried = target_cost(model, target, imgsz, timer), largest_share(model, masks.layer_keep), []
    for k in range(available + 1):
        tried.append((k, cost(pruned_at(model, top, masks, k))))
        LOGGER.info(f"target: {k} shortcut block(s) removed, largest share -> {target.show(tried[-1][1])}")
        if target.met(tried[-1][1]):
            return k, tried
    last = tried[-1][1]
    raise TargetUnreachable(f"--target-{target.flag} {target.value:g} cannot be met: with every shortcut block "
                            f"removed ({available}) the largest share leaves {target.show(last)} "
                            f"({last / target.value - 1:+.1%} of the target), the closest achievable here; lower "
                            f"--layer-keep or --round-to, or raise the target", last)


def find_share(model: nn.Module, target: Target, masks: MaskOptions, shortcuts: int, imgsz: int,
               timer: Callable[[nn.Module], float] | None = None) -> SearchResult:
    """The smallest global share whose pruned model (pruned_at) meets `target`: GFLOPs at `imgsz`, parameters,
    or `timer(model)` ms (a latency target needs one: prune.measure.model_latency's median where it will run)."""
    cost = target_cost(model, target, imgsz, timer)
    return search_share(lambda s: pruned_at(model, s, masks, shortcuts), cost, target,
                        largest_share(model, masks.layer_keep), resolution=1.0 / prunable_count(model))
