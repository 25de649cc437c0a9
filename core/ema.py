"""Exponential moving average of model weights (YOLOv5's ModelEMA, with the decay ramp)."""
from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import nn


__all__ = ["ModelEMA"]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside torch.compile's wrapper and DataParallel / DistributedDataParallel."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


class ModelEMA:
    """Keeps ema = d * ema + (1 - d) * model, with d = decay * (1 - exp(-updates / tau)).

    The ramp makes early EMA weights follow the model closely while it changes fast.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(unwrap(model)).eval()
        self.updates = updates
        self.decay_at = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        current = unwrap(model).state_dict()
        floats, targets = [], []
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                floats.append(v)
                targets.append(current[k].detach())
            else:  # e.g. BN num_batches_tracked
                v.copy_(current[k])
        # ema += (1 - d) * (model - ema): one multi-tensor kernel instead of two ops per tensor
        torch._foreach_lerp_(floats, targets, 1 - d)
