"""Where the pruning goes: the per-channel score that the one global threshold ranks (`--allocation`).

- global: |gamma| itself (network slimming). Layers whose gammas are small overall lose most of their channels.
- lamp: layer-adaptive magnitude pruning (Lee et al., ICLR 2021) on gamma^2. Within a layer, channels sorted by
  gamma^2 ascending, u's score is gamma_u^2 / sum of gamma_v^2 over v at or after u in that order: the share of
  the layer's remaining magnitude that u holds. Each layer's largest channel scores 1, so no layer empties before
  every layer is pruned hard, and a layer of equal gammas scores 1/n, ..., 1/2, 1 (pruned evenly with the rest).
- l1: weight magnitude, as Torch-Pruning's MagnitudeImportance(p=1): a channel's score is the L1 norm of its
  conv's output weights plus the L1 norm of every consumer's input weights that read it (how much it is used
  downstream, which |gamma| does not see), divided by its layer's mean score, so the one global threshold ranks
  channels within their layer's scale (a layer of large fan-in does not win every comparison).
- sensitivity: |gamma| times a per-layer weight from measured mAP drops (prune/sensitivity.py): weight =
  (drop + eps) / (mean drop + eps), clipped to [1/10, 10]. A layer whose masking cost twice the mean drop keeps
  channels whose |gamma| is up to half the global threshold.
Coupled convs (a shortcut's sum) are scored per member and their masks united, as with |gamma|.
"""
from __future__ import annotations

import torch

from prune.graph import PruneGraph

__all__ = ["ALLOCATIONS", "channel_scores", "gammas", "lamp_scores", "sensitivity_weights", "weight_l1_scores"]

ALLOCATIONS = ("global", "lamp", "l1", "sensitivity")
WEIGHT_CLIP = 10.0  # the most a measured sensitivity can scale one layer's scores, up or down
DROP_EPS = 1e-3  # mAP drops below this count as none (the noise of a val subset)


def gammas(graph: PruneGraph) -> dict[str, torch.Tensor]:
    """|gamma| of every prunable conv's BN (detached, cpu, float)."""
    return {n: m.bn.weight.detach().abs().float().cpu() for n, m in graph.convs.items()}


def lamp_scores(g: torch.Tensor) -> torch.Tensor:
    """LAMP score of each entry of one layer's importance vector `g` (here |gamma|), in the input's order."""
    sq = g.detach().float() ** 2
    order = torch.argsort(sq, stable=True)
    tail = torch.flip(torch.cumsum(torch.flip(sq[order], [0]), 0), [0])  # sum over this and every larger entry
    scores = torch.empty_like(sq)
    scores[order] = torch.where(tail > 0, sq[order] / tail, torch.zeros_like(tail))
    return scores


def weight_l1_scores(graph: PruneGraph) -> dict[str, torch.Tensor]:
    """Per output channel of every prunable conv: L1 of its output weights + L1 of the input weights of every
    consumer reading it (a shortcut's sum counts for each member), over its layer's mean (see the module doc)."""
    out = {n: m.conv.weight.detach().abs().float().cpu().flatten(1).sum(1) for n, m in graph.convs.items()}
    for c in graph.consumers:
        w = c.conv.weight.detach().abs().float().cpu()
        offset = 0
        for segment in c.inputs:
            width = graph.width(segment[0])
            if c.conv.groups > 1:  # depthwise: input channel i is read by output channel i only
                used = w[offset:offset + width].flatten(1).sum(1)
            else:
                used = w[:, offset:offset + width].transpose(0, 1).flatten(1).sum(1)
            for name in segment:
                if name in out:
                    out[name] = out[name] + used
            offset += width
    return {n: v / v.mean().clamp_min(1e-12) for n, v in out.items()}


def sensitivity_weights(drops: dict[str, float], names) -> dict[str, float]:
    """Per-conv score weight from measured mAP drops; a conv with no measurement gets 1."""
    known = [max(drops[n], 0.0) for n in names if n in drops]
    if not known:
        return {n: 1.0 for n in names}
    mean = sum(known) / len(known)
    return {n: min(WEIGHT_CLIP, max(1 / WEIGHT_CLIP, (max(drops[n], 0.0) + DROP_EPS) / (mean + DROP_EPS)))
            if n in drops else 1.0 for n in names}


def channel_scores(graph: PruneGraph, allocation: str = "global",
                   sensitivity: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The score of every prunable conv's output channels (detached, cpu, float): the global threshold ranks these."""
    g = gammas(graph)
    if allocation == "global":
        return g
    if allocation == "lamp":
        return {n: lamp_scores(v) for n, v in g.items()}
    if allocation == "l1":
        return weight_l1_scores(graph)
    if allocation == "sensitivity":
        if not sensitivity:
            raise ValueError("--allocation sensitivity needs measured drops (--sensitivity FILE from prune.sensitivity)")
        w = sensitivity_weights(sensitivity, list(g))
        return {n: v * w[n] for n, v in g.items()}
    raise ValueError(f"--allocation {allocation!r}: choose one of {', '.join(ALLOCATIONS)}")
