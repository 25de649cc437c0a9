"""Test-time augmentation as YOLOv5 does it: three scales, a left-right flip on the middle one.

The image (B, 3, H, W) is run at scales 1, 0.83 (flipped left-right first) and 0.67; each resized
image is padded right/bottom to a multiple of the max stride with grey 0.447. Each pass's
predictions [cx, cy, w, h, ...] (pixels of the resized image) are mapped back to the input image:
divided by the exact per-axis resize gain (new size / old size, so int() rounding of the size
costs nothing), then cx -> W - cx for the flipped pass. As in YOLOv5, the largest-stride level is
dropped from the full-scale pass (its large-object boxes are better seen at smaller scales) and the
smallest-stride level from the smallest pass. The merged predictions then go through one NMS.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TTA", "scale_image", "descale", "level_mask"]

SCALES = (1.0, 0.83, 0.67)
FLIPS = (False, True, False)  # left-right flip on the middle scale only
PAD_VALUE = 0.447  # grey (ImageNet mean), as YOLOv5's scale_img


def scale_image(x: torch.Tensor, ratio: float, gs: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """Resize (B, 3, H, W) by `ratio` (bilinear), pad right/bottom to a multiple of gs.

    Returns (image, (gain_x, gain_y)) with gain = resized size / input size per axis.
    """
    if ratio == 1.0:
        return x, (1.0, 1.0)
    h, w = x.shape[2:]
    nh, nw = int(h * ratio), int(w * ratio)
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    ph, pw = math.ceil(h * ratio / gs) * gs, math.ceil(w * ratio / gs) * gs
    return F.pad(y, [0, pw - nw, 0, ph - nh], value=PAD_VALUE), (nw / w, nh / h)


def descale(pred: torch.Tensor, gain: tuple[float, float], flip_width: float | None = None) -> torch.Tensor:
    """Predictions [cx, cy, w, h, ...] of a resized (and, when flip_width is given, first
    left-right flipped) image -> pixels of the original image of that width. Input unchanged."""
    p = pred.clone()
    p[..., [0, 2]] /= gain[0]
    p[..., [1, 3]] /= gain[1]
    if flip_width is not None:
        p[..., 0] = flip_width - p[..., 0]
    return p


def level_mask(n: int, hw: tuple[int, int], strides: torch.Tensor, drop: int) -> torch.Tensor:
    """Boolean mask over the n prediction rows of an (h, w) input without the rows of level `drop`.

    Rows come level after level (Detect's order), na anchors x (h/s) x (w/s) cells per level.
    """
    cells = [int(hw[0] // s) * int(hw[1] // s) for s in strides.tolist()]
    na = n // sum(cells)
    keep = torch.ones(n, dtype=torch.bool)
    start = na * sum(cells[:drop])
    keep[start:start + na * cells[drop]] = False
    return keep


class TTA(nn.Module):
    """Wrap an eval model (forward -> (pred, ...), `stride`, `names`): forward -> (merged pred, None)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model, "fixed_imgsz", None):
            raise ValueError(f"{getattr(model, 'path', 'model')}: test-time augmentation runs other image sizes; "
                             "export the ONNX file with dynamic=True")
        self.model = model
        self.names, self.nc = model.names, model.nc

    @property
    def stride(self) -> torch.Tensor:
        return self.model.stride

    def forward(self, x: torch.Tensor):
        w = x.shape[3]
        strides = self.model.stride.cpu()
        gs = int(strides.max())
        drops = (int(strides.argmax()), None, int(strides.argmin()))
        outs = []
        for ratio, flip, drop in zip(SCALES, FLIPS, drops):
            xi, gain = scale_image(x.flip(3) if flip else x, ratio, gs)
            p = descale(self.model(xi)[0], gain, w if flip else None)
            if drop is not None:
                p = p[:, level_mask(p.shape[1], xi.shape[2:], strides, drop).to(p.device)]
            outs.append(p)
        return torch.cat(outs, 1), None
