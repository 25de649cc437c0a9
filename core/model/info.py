"""Model size and cost: parameter counts, GFLOPs (thop) and a YOLOv5-style layer table."""
from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn


__all__ = ["model_info", "model_gflops", "param_count", "layer_table"]


def param_count(model: nn.Module) -> int:
    """Parameters (BN statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def model_gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs (2 x MACs / 1e9) of one forward pass on a 1 x ch x imgsz x imgsz image.

    thop runs on a deep copy, so its hooks and counters never touch ``model``. NaN if thop is missing.
    """
    try:
        import thop  # optional: without it GFLOPs are NaN
    except ImportError:
        warnings.warn('thop is not installed: GFLOPs reported as NaN')
        return math.nan
    p = next(model.parameters())
    ch = int(getattr(model, 'arch', {}).get('ch', 3))
    probe = copy.deepcopy(model).eval()
    x = torch.zeros(1, ch, imgsz, imgsz, device=p.device, dtype=p.dtype)
    macs, _ = thop.profile(probe, inputs=(x,), verbose=False)
    return 2.0 * float(macs) / 1e9


def model_info(model: nn.Module, imgsz: int = 640) -> dict:
    """``{'layers', 'params', 'gradients', 'gflops'}``; layers counts modules as YOLOv5 does."""
    return {
        'layers': len(list(model.modules())),
        'params': param_count(model),
        'gradients': sum(p.numel() for p in model.parameters() if p.requires_grad),
        'gflops': model_gflops(model, imgsz),
    }


def layer_table(model: nn.Module) -> str:
    """Printable summary: index, from, repeats, params, module and its arguments / channels."""
    rows = [f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<14}{'arguments'}"]
    for m in model.model:
        if m.type == 'Detect':
            args = f'[nc={m.nc}, na={m.na}, ch={[c.in_channels for c in m.m]}]'
        else:
            outs = _out_channels(m)
            args = f'{m.args}' + (f' -> {outs} ch' if outs else '')
        rows.append(f'{m.i:>3}{str(m.f):>18}{m.n:>3}{m.np:10,}  {m.type:<14}{args}')
    params = param_count(model)
    rows.append(f'{len(model.model)} layers, {params:,} parameters')
    return '\n'.join(rows)


def _out_channels(m: nn.Module) -> int | None:
    """Output channels of a layer's last conv (None for layers without convs)."""
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    return convs[-1].out_channels if convs else None
