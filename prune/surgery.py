"""Channel surgery: beta compensation, then a compact model built from its architecture dict.

With its gamma at 0 a pruned channel outputs the constant a = act(beta). That constant flows
through adds (summing), concats, upsample and max-pool into every consuming conv, where it adds
W.sum(kernel dims) @ a to each output (exact away from zero-padded borders). Compensation moves
that offset into the consumer: subtracted from its BN's running_mean, or added to its bias
(Detect). After that the pruned channels can be cut with no change in the interior of the maps.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from core.model.yolo import Model
from prune.graph import INPUT, Consumer, Layout, PruneGraph, is_depthwise, trace


def _layout_vector(graph: PruneGraph, layout: Layout, per_conv: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate over segments the sum of the members' per-channel vectors (0 where absent)."""
    parts = []
    for seg in layout:
        v = torch.zeros(graph.width(seg[0]), dtype=torch.float64)
        for name in seg:
            if name in per_conv:
                v = v + per_conv[name].double()
        parts.append(v)
    return torch.cat(parts)


def input_mask(graph: PruneGraph, layout: Layout, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Kept input channels of a consumer: its segments' group masks, concatenated."""
    return torch.cat([masks[s[0]] if s[0] != INPUT else torch.ones(graph.width(INPUT), dtype=torch.bool)
                      for s in layout])


def pruned_constants(graph: PruneGraph, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """act(beta) on the pruned channels of every conv (0 on kept channels)."""
    out = {}
    for name, m in graph.convs.items():
        with torch.no_grad():
            a = m.act(m.bn.bias.detach().double().cpu().clone())  # act may be in-place
        out[name] = torch.where(masks[name], torch.zeros_like(a), a)
    return out


@torch.no_grad()
def absorb_constants(graph: PruneGraph, constants: dict[str, torch.Tensor], skip: set[str] = frozenset()) -> int:
    """Fold constant input channels into every consumer (BN running_mean or conv bias). In place.

    `constants[name]` is the per-channel constant that conv `name` now contributes wherever its
    output is read (summed over residual adds). Consumers named in `skip` are left alone.
    Returns the number of consumers changed.
    """
    changed = 0
    for c in graph.consumers:
        if c.name in skip or all(s == (INPUT,) for s in c.inputs):
            continue
        v = _layout_vector(graph, c.inputs, constants)
        if not torch.any(v):
            continue
        w = c.conv.weight.detach().double().cpu().sum(dim=(2, 3))  # (out, in/groups), float64: no rounding drift
        offset = w[:, 0] * v if is_depthwise(c.conv) else w @ v  # depthwise: channel i reads input i only
        if c.bn is not None:
            c.bn.running_mean.sub_(offset.to(c.bn.running_mean))
        elif c.conv.bias is not None:
            c.conv.bias.add_(offset.to(c.conv.bias))
        else:
            raise ValueError(f"{c.name}: consumer has neither a BN nor a bias to absorb a constant")
        changed += 1
    return changed


@torch.no_grad()
def zero_pruned(graph: PruneGraph, masks: dict[str, torch.Tensor], betas: bool = True) -> None:
    """Zero the pruned channels' gammas (and betas) in place: the full-size view of a pruned model."""
    for name, m in graph.convs.items():
        m.bn.weight[~masks[name]] = 0
        if betas:
            m.bn.bias[~masks[name]] = 0


def compact_arch(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict:
    """The model's architecture dict with explicit per-conv channel counts from the masks."""
    arch = copy.deepcopy(model.arch)
    channels = dict(arch.get("channels") or {})
    channels.update({name: int(keep.sum()) for name, keep in masks.items()})
    arch["channels"] = channels
    return arch


def _consumer_state(c: Consumer, sd: dict, out_idx: torch.Tensor | None, in_idx: torch.Tensor) -> dict:
    """Sliced state entries of one consumer (Conv + BN, or a Detect conv with bias)."""
    new = {}
    if c.bn is not None:
        w = sd[f"{c.name}.conv.weight"][out_idx]
        if not is_depthwise(c.conv):  # a depthwise weight is (C, 1, k, k): its inputs are its outputs
            w = w[:, in_idx]
        new[f"{c.name}.conv.weight"] = w
        for key in ("weight", "bias", "running_mean", "running_var"):
            new[f"{c.name}.bn.{key}"] = sd[f"{c.name}.bn.{key}"][out_idx]
    else:
        new[f"{c.name}.weight"] = sd[f"{c.name}.weight"][:, in_idx]
    return new


def slice_state_dict(model: nn.Module, graph: PruneGraph, masks: dict[str, torch.Tensor]) -> dict:
    """The state_dict of the compact model: kept rows/columns of every conv, the rest unchanged."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for c in graph.consumers:
        in_idx = torch.nonzero(input_mask(graph, c.inputs, masks)).flatten()
        out_idx = torch.nonzero(masks[c.name]).flatten() if c.bn is not None else None
        sd.update(_consumer_state(c, sd, out_idx, in_idx))
    return sd


def build_model(arch: dict, state_dict: dict, like: nn.Module) -> nn.Module:
    """Build a Model from `arch`, load `state_dict` strictly, match `like`'s dtype, device and mode."""
    p = next(like.parameters())
    new = Model(arch).to(device=p.device, dtype=p.dtype)  # before loading: no rounding through float32
    new.load_state_dict(state_dict, strict=True)
    for attr in ("names", "hyp"):
        if hasattr(like, attr):
            setattr(new, attr, copy.deepcopy(getattr(like, attr)))
    return new.train(like.training)


def prune_channels(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Compensate the pruned channels' constants and return the compact model (input unchanged)."""
    work = copy.deepcopy(model)
    graph = trace(work)
    absorb_constants(graph, pruned_constants(graph, masks))
    return build_model(compact_arch(work, masks), slice_state_dict(work, graph, masks), model)
