"""Channel masks from BN gammas: one global threshold on the channels' scores (|gamma|, or a layer-adaptive score:
prune/allocation.py), a per-layer floor, coupled unions, rounding, and the refill's extra channels (prune/refill.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prune.allocation import ALLOCATIONS, channel_scores, gammas
from prune.graph import PruneGraph

__all__ = ["MaskOptions", "PruneOptionError", "Threshold", "check_options", "compute_masks", "threshold"]


class PruneOptionError(ValueError):
    """A pruning option is out of range or would break the model."""


@dataclass
class MaskOptions:
    global_percent: float = 0.2  # share of all prunable |gamma| below the threshold, in [0, 1)
    layer_keep: float = 0.01  # floor per layer: max(1, ceil(C * layer_keep)); 0 = strict (error if emptied)
    round_to: int = 1  # kept channels of each group rounded up to a multiple of this
    allocation: str = "global"  # what the threshold ranks: global |gamma|, lamp, sensitivity (prune/allocation.py)
    sensitivity: dict[str, float] | None = None  # conv -> measured mAP drop (allocation 'sensitivity')
    grow: dict[str, int] | None = None  # group (first conv) -> channels kept beyond the rounded count (prune/refill.py)

    def scores(self, graph: PruneGraph) -> dict[str, torch.Tensor]:
        return channel_scores(graph, self.allocation, self.sensitivity)


@dataclass
class Threshold:
    value: float  # |gamma| below this is pruned
    safe_value: float  # the largest threshold that leaves every group >= 1 channel
    safe_percent: float  # the global percent matching safe_value
    tightest: str  # first conv of the group that empties first


def check_options(opts: MaskOptions) -> None:
    if not 0.0 <= opts.global_percent < 1.0:
        raise PruneOptionError(f"--global-percent {opts.global_percent} is outside [0, 1)")
    if not 0.0 <= opts.layer_keep <= 1.0:
        raise PruneOptionError(f"--layer-keep {opts.layer_keep} is outside [0, 1]")
    if opts.round_to < 1:
        raise PruneOptionError(f"--round-to {opts.round_to} must be >= 1")
    if opts.allocation not in ALLOCATIONS:
        raise PruneOptionError(f"--allocation {opts.allocation!r}: choose one of {', '.join(ALLOCATIONS)}")
    if any(v < 0 for v in (opts.grow or {}).values()):
        raise PruneOptionError(f"grow {opts.grow}: extra channels must be >= 0")
    if opts.allocation == "sensitivity" and not opts.sensitivity:
        raise PruneOptionError("--allocation sensitivity needs --sensitivity FILE (python -m prune.sensitivity)")


def threshold(graph: PruneGraph, percent: float, scores: dict[str, torch.Tensor] | None = None) -> Threshold:
    """Global threshold at `percent` on the channels' scores (default |gamma|) and the safe maximum leaving every
    group a channel."""
    g = gammas(graph) if scores is None else scores
    flat = torch.sort(torch.cat(list(g.values()))).values
    n_prune = min(int(math.floor(percent * flat.numel())), flat.numel() - 1)
    value = float(flat[n_prune]) if percent > 0 else 0.0
    group_max = {grp[0]: max(float(g[n].max()) for n in grp) for grp in graph.groups()}
    tightest = min(group_max, key=group_max.get)
    safe = group_max[tightest]
    safe_percent = float((flat < safe).sum()) / flat.numel()
    return Threshold(value, safe, safe_percent, tightest)


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep[torch.argsort(score, descending=True, stable=True)[:k]] = True
    return keep


def compute_masks(graph: PruneGraph, opts: MaskOptions) -> tuple[dict[str, torch.Tensor], Threshold]:
    """Keep-masks (bool, per output channel) for every prunable conv; coupled convs get one mask."""
    check_options(opts)
    g = opts.scores(graph)
    thr = threshold(graph, opts.global_percent, g)
    if opts.layer_keep == 0 and thr.value > thr.safe_value:
        raise PruneOptionError(
            f"--global-percent {opts.global_percent} would empty layer {thr.tightest} "
            f"(all {'|gamma|' if opts.allocation == 'global' else opts.allocation + ' scores'} < threshold "
            f"{thr.value:.4g}); the safe maximum is "
            f"{thr.safe_percent:.3f} (threshold {thr.safe_value:.4g}), or use --layer-keep > 0")
    masks: dict[str, torch.Tensor] = {}
    for grp in graph.groups():
        keep = torch.zeros_like(g[grp[0]], dtype=torch.bool)
        for name in grp:  # per-layer threshold + floor, then union over the coupled convs
            floor = max(1, math.ceil(g[name].numel() * opts.layer_keep))
            keep |= (g[name] >= thr.value) | _top(g[name], floor)
        k = int(keep.sum())
        target = min(keep.numel(), math.ceil(k / opts.round_to) * opts.round_to + (opts.grow or {}).get(grp[0], 0))
        if target > k:  # add the best pruned channels (group score = max |gamma| over members)
            score = torch.stack([g[n] for n in grp]).max(0).values
            score[keep] = float("inf")
            keep = _top(score, target)
        for name in grp:
            masks[name] = keep
    return masks, thr
