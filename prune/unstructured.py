"""Unstructured L1 pruning as YOLOv5's torch_utils `prune(model, amount)` does it: per conv.

Every Conv2d (Detect's included) loses the `amount` share of its smallest |weights|
(torch.nn.utils.prune.l1_unstructured, then made permanent). The zeros stay stored in dense
tensors, so dense conv kernels do the same work: no FLOPs, size or latency saved (measured in
the pipeline's latency column); the row shows what the zeros cost in accuracy.
"""
from __future__ import annotations

import copy

import torch.nn as nn
import torch.nn.utils.prune as tprune


def prune_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """A copy of `model` with each conv's `amount` smallest-|w| weights set to zero."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"unstructured amount {amount} is outside [0, 1)")
    work = copy.deepcopy(model)
    for m in work.modules():
        if isinstance(m, nn.Conv2d):
            tprune.l1_unstructured(m, name="weight", amount=amount)
            tprune.remove(m, "weight")  # bake the mask into the weight: a plain state_dict again
    return work


def sparsity(model: nn.Module) -> tuple[dict[str, float], float, float]:
    """(zero share per conv weight, zero share over all conv weights, over all parameters: YOLOv5's global figure)."""
    per, zeros, total = {}, 0, 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            z = int((m.weight == 0).sum())
            per[name] = z / m.weight.numel()
            zeros, total = zeros + z, total + m.weight.numel()
    params = list(model.parameters())
    all_zero = sum(int((p == 0).sum()) for p in params) / max(sum(p.numel() for p in params), 1)
    return per, zeros / max(total, 1), all_zero
