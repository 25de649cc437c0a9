"""Optimizer parameter groups, learning-rate schedule and warmup (YOLOv5 recipe)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn


__all__ = ["build_optimizer", "lr_lambda", "resolve_auto", "OptimizerPlan", "plan_optimizer", "warmup"]


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, decay: float) -> torch.optim.Optimizer:
    """Three groups, in YOLOv5's order: 0 = norm weights (no decay), 1 = conv/linear weights (decay),
    2 = biases (no decay; the group warmup starts at warmup_bias_lr).

    Decaying BN gammas or biases only shrinks them toward zero for no regularisation benefit.
    """
    conv_w, norm_w, biases = [], [], []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if pname == "bias":
                biases.append(p)
            elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                norm_w.append(p)
            else:
                conv_w.append(p)
    name = name.lower()
    fused = _fused_supported(conv_w + norm_w + biases)
    if name == "sgd":
        opt = torch.optim.SGD(norm_w, lr=lr, momentum=momentum, nesterov=True, fused=fused)
    elif name == "adam":
        opt = torch.optim.Adam(norm_w, lr=lr, betas=(momentum, 0.999), fused=fused)
    elif name == "adamw":
        opt = torch.optim.AdamW(norm_w, lr=lr, betas=(momentum, 0.999), weight_decay=0.0, fused=fused)
    else:
        raise ValueError(f"--optimizer '{name}' is not one of SGD, Adam, AdamW, auto")
    opt.add_param_group({"params": conv_w, "weight_decay": decay})
    opt.add_param_group({"params": biases, "weight_decay": 0.0})
    return opt


def _fused_supported(params: list[torch.Tensor]) -> bool | None:
    """PyTorch's fused (one-kernel) SGD/Adam/AdamW where every parameter is a float tensor on CPU or CUDA: on a
    CPU yolov5n step AdamW's update took 1.6 ms instead of 7.1 (README, Speed levers). Elsewhere (e.g. MPS)
    None leaves PyTorch its default implementation. Fused and per-tensor updates differ by float rounding."""
    ok = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
    return True if ok and params else None


# Above this many optimizer steps, `auto` picks SGD: momentum SGD generalises better on long schedules,
# while AdamW gets much further in a short CPU budget where SGD at lr 0.01 has barely left warmup.
AUTO_SGD_STEPS = 10_000


def resolve_auto(name: str, hyp: dict, nc: int, optimizer_steps: int) -> tuple[str, dict]:
    """Resolve `--optimizer auto` into (optimizer name, hyp used to drive it); other names pass through.

    auto = SGD with the hyp's lr0/momentum for long runs (> AUTO_SGD_STEPS optimizer steps); for short
    runs AdamW with lr0 = min(0.004, 0.04 / (4 + nc)), beta1 0.9, and no raised bias lr during warmup
    (0.1 would be 25x the AdamW lr). The trainer then steps every batch (no accumulation to 64). lr0
    falls with more classes, whose BCE terms add gradient: 0.0005 at nc=80, 0.004 at nc=6. On a
    held-out 6-class set (README), 30 epochs at nominal batch 16 reached mAP50-95 0.262 with lr0 0.004
    and 0.117 with 0.008; 0.002 trailed 0.004 at epoch 18 (0.076 vs 0.131). Capped at the best value tried.
    """
    if name.lower() != "auto":
        return name, hyp
    if optimizer_steps > AUTO_SGD_STEPS:
        return "SGD", hyp
    return "AdamW", {**hyp, "lr0": round(min(0.004, 0.04 / (4 + nc)), 6), "momentum": 0.9, "warmup_bias_lr": 0.0}


@dataclass(frozen=True)
class OptimizerPlan:
    """How a run steps, decided once from the options and the data size."""

    name: str            # SGD | Adam | AdamW
    hyp: dict            # the hyp that drives the optimizer (auto's AdamW has its own lr0, momentum, bias warmup)
    nbs: int             # nominal batch: gradients accumulate up to it
    accumulate: int      # batches per optimizer step once warmup is over
    weight_decay: float  # the hyp's weight_decay scaled to the batch a step actually applies
    steps: int           # optimizer steps of the whole run


def plan_optimizer(name: str, hyp: dict, nc: int, images: int, batch_size: int, epochs: int,
                   nbs: int = 0) -> OptimizerPlan:
    """Resolve the optimizer, nominal batch, accumulation and weight decay of a run (pure: nothing is built).

    `nbs` 0 means 64 (YOLOv5), except under `auto` resolving to AdamW, which steps every batch.
    `auto` judges the run by the steps it would take without accumulation to 64 (the given nbs, else
    every batch), so a short run is the one AdamW would finish in at most AUTO_SGD_STEPS steps.
    """
    unaccumulated = math.ceil(images / max(batch_size, nbs or batch_size)) * epochs
    resolved, hyp_run = resolve_auto(name, hyp, nc, unaccumulated)
    if not nbs:
        nbs = batch_size if name.lower() == "auto" and resolved == "AdamW" else 64
    accumulate = max(round(nbs / batch_size), 1)
    return OptimizerPlan(name=resolved, hyp=hyp_run, nbs=nbs, accumulate=accumulate,
                         weight_decay=hyp["weight_decay"] * batch_size * accumulate / nbs,
                         steps=math.ceil(images / max(batch_size, nbs)) * epochs)


def lr_lambda(epochs: int, lrf: float, cosine: bool) -> Callable[[int], float]:
    """Multiplier of lr0 per epoch: cosine or linear from 1 down to lrf at the last epoch."""
    if cosine:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def warmup(optimizer: torch.optim.Optimizer, ni: int, nw: int, epoch: int, hyp: dict,
           lf: Callable[[int], float], nbs: int, batch_size: int) -> int:
    """Interpolate lr (bias group from warmup_bias_lr down, others from 0 up) and momentum over the
    first nw iterations; return the number of batches to accumulate at this iteration."""
    xi = [0, nw]
    accumulate = max(1, int(np.interp(ni, xi, [1, nbs / batch_size]).round()))
    for j, group in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 2 else 0.0
        group["lr"] = float(np.interp(ni, xi, [start, group["initial_lr"] * lf(epoch)]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
        elif "betas" in group:
            group["betas"] = (float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]])), group["betas"][1])
    return accumulate
