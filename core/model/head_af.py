"""Anchor-free decoupled head (the YOLOv8 / YOLOv5u design, written here): DFL boxes, per-class scores.

Per level i (stride s), two branches read the same feature map:
- box: Conv 3x3 -> Conv 3x3 -> Conv2d 1x1 to 4 * reg_max logits: for each side (left, top, right, bottom)
  a distribution over the distances 0, 1, ..., reg_max - 1 (in strides) from the cell's anchor point;
- cls: Conv 3x3 -> Conv 3x3 -> Conv2d 1x1 to nc logits (no objectness).
An anchor point is a cell centre, (x + 0.5, y + 0.5) in grid units. A side's distance is the expectation
of its distribution (softmax, then the dot product with 0..reg_max-1: the "integral" of DFL), so a box is
[point - (l, t), point + (r, b)] * s.

Outputs follow Detect's contract so the engine needs nothing new: training -> list of raw maps
(B, 1, ny, nx, no) with no = 4 * reg_max + nc (one "anchor" per cell); eval -> (pred (B, N, 5 + nc), raw)
with pred = [cx, cy, w, h, obj, cls...] in input pixels. There is no objectness, so the score columns are
shaped for NMS's conf = obj * cls (and its conf = obj for one class): obj = 1 and cls = the class scores, or
with one class obj = its score and cls = 1. Either way obj * cls_c is class c's score, exactly, for every
consumer (NMS best-class and multi-label, ensembles with anchor-based members, core.diagnose). (A ratio
such as cls = score / best score would keep obj meaningful, but it divides float error by small scores:
onnxruntime's sigmoid differs from PyTorch's by ~1e-4 relative on scores near 1e-4.)
"""
from __future__ import annotations

import torch
from torch import nn

from .common import Conv
from .head import GridCache

__all__ = ["DetectAF", "anchor_points", "integral"]

PRIOR_OBJECTS = 5  # objects per 640 x 640 image assumed by the class-bias prior (initialize_biases)


def anchor_points(shapes: list[tuple[int, int]], strides: list[float] | torch.Tensor, device=None,
                  dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of every level, level after level, rows then columns: ((N, 2) xy in grid units of
    their own level, (N, 1) the level's stride)."""
    points, scale = [], []
    for (ny, nx), s in zip(shapes, strides):
        # integer arange, then cast: the ONNX exporter cannot trace an fp16 arange (Range) on CPU
        y, x = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing='ij')
        points.append(torch.stack((x, y), -1).view(-1, 2).to(dtype) + 0.5)
        scale.append(torch.full((ny * nx, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(scale)


def integral(logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """(..., 4 * reg_max) side logits -> (..., 4) expected distances (l, t, r, b) in bins (strides)."""
    bins = torch.arange(reg_max, device=logits.device).to(logits.dtype)  # int, then cast: see anchor_points
    prob = logits.unflatten(-1, (4, reg_max)).softmax(-1)
    return (prob * bins).sum(-1)


def _branch(c1: int, c_mid: tuple[int, int], c_out: int) -> nn.Sequential:
    return nn.Sequential(Conv(c1, c_mid[0], 3), Conv(c_mid[0], c_mid[1], 3), nn.Conv2d(c_mid[1], c_out, 1))


class DetectAF(GridCache, nn.Module):
    """Anchor-free head: ``box[i]`` and ``cls[i]`` branches per input level; ``stride`` (nl,) set at build.

    Hidden widths follow the nominal (unpruned) first-level input ``ch_nom[0]``: box max(16, c / 4,
    4 * reg_max), cls max(c, min(nc, 100)); ``channels`` ('box.0.0', 'cls.2.1', ...) overrides them, as a
    pruned architecture does. The final 1x1 convs are outputs and never change width.
    """

    na = 1  # one prediction per cell: the engine's "anchors per cell"

    def __init__(self, nc: int, reg_max: int = 16, ch: list[int] = (), ch_nom: list[int] | None = None,
                 channels: dict[str, int] | None = None):
        super().__init__()
        if int(reg_max) < 2:
            raise ValueError(f'DetectAF: reg_max must be >= 2 (bins per box side), got {reg_max!r}')
        self.nc, self.reg_max, self.nl = int(nc), int(reg_max), len(ch)
        self.no = 4 * self.reg_max + self.nc  # raw channels per cell
        c0 = (ch_nom or ch)[0]
        widths = {'box': max(16, c0 // 4, 4 * self.reg_max), 'cls': max(c0, min(self.nc, 100))}
        channels = channels or {}

        def hidden(kind: str, i: int) -> tuple[int, int]:
            return tuple(int(channels.get(f'{kind}.{i}.{j}', widths[kind])) for j in (0, 1))

        self.box = nn.ModuleList(_branch(c, hidden('box', i), 4 * self.reg_max) for i, c in enumerate(ch))
        self.cls = nn.ModuleList(_branch(c, hidden('cls', i), self.nc) for i, c in enumerate(ch))
        self.register_buffer('stride', torch.zeros(self.nl), persistent=False)
        self._grids: dict[tuple, torch.Tensor] = {}

    def set_stride(self, stride: torch.Tensor) -> None:
        self.stride.copy_(stride.to(self.stride))

    @torch.no_grad()
    def initialize_biases(self, class_freq=None) -> None:
        """Class biases at the prior logit(p) of a cell being a positive of class c: PRIOR_OBJECTS objects
        per 640^2 image over its (640 / s)^2 cells at stride s, shared among the classes by `class_freq`
        (label counts or frequencies) or evenly: p = 5 f_c / (640 / s)^2 (Ultralytics uses log(5 / nc /
        (640 / s)^2), the small-p form of the same logit). Box biases 0: a constant bias leaves each side's
        softmax unchanged, so the initial distributions are the weights' alone."""
        if class_freq is not None:
            cf = torch.as_tensor(class_freq, dtype=torch.float64).flatten()
            if cf.numel() != self.nc:
                raise ValueError(f'class_freq has {cf.numel()} entries, model has nc={self.nc}')
            seen = cf[cf > 0]
            cf = torch.where(cf > 0, cf, seen.min() / 2 if seen.numel() else torch.ones(()))
            share = cf / cf.sum()
        else:
            share = torch.full((self.nc,), 1.0 / self.nc, dtype=torch.float64)
        for box, cls, s in zip(self.box, self.cls, self.stride.tolist()):
            p = (PRIOR_OBJECTS * share / (640 / s) ** 2).clamp(max=0.5)
            cls[-1].bias.copy_(torch.log(p / (1 - p)).to(cls[-1].bias))
            box[-1].bias.zero_()

    def _points(self, ny: int, nx: int, like: torch.Tensor) -> torch.Tensor:
        key = (ny, nx, like.device, like.dtype)
        pts = self._grids.get(key)
        if pts is None:  # cached per shape (export clears the cache so the trace computes it)
            pts = self._grids[key] = anchor_points([(ny, nx)], [1.0], like.device, like.dtype)[0]
        return pts

    def forward(self, x: list[torch.Tensor]):
        raw = []
        for i in range(self.nl):
            p = torch.cat((self.box[i](x[i]), self.cls[i](x[i])), 1)  # (B, no, ny, nx)
            raw.append(p.permute(0, 2, 3, 1).unsqueeze(1).contiguous())  # (B, 1, ny, nx, no)
        if self.training:
            return raw
        return torch.cat([self._decode(p, i) for i, p in enumerate(raw)], 1), raw

    def _decode(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """One level's raw map -> (B, ny * nx, 5 + nc) [cx, cy, w, h, obj, cls...] in pixels."""
        bs, _, ny, nx, _ = p.shape
        p = p.view(bs, ny * nx, self.no)
        ltrb = integral(p[..., :4 * self.reg_max], self.reg_max)
        lt, rb = ltrb[..., :2], ltrb[..., 2:]
        s = self.stride[i].to(p.dtype)
        xy = (self._points(ny, nx, p) + (rb - lt) / 2) * s
        wh = (lt + rb) * s
        scores = p[..., 4 * self.reg_max:].sigmoid()
        if self.nc == 1:
            obj, cls = scores, torch.ones_like(scores)
        else:
            obj, cls = torch.ones_like(scores[..., :1]), scores
        return torch.cat((xy, wh, obj, cls), -1)

