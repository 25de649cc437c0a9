"""Detect head: one 1x1 output conv per level, anchors in grid units, YOLOv5 v6 box decoding."""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

__all__ = ["Detect"]

LOGGER = logging.getLogger(__name__)


def _placeholder_anchors(na: int, stride: torch.Tensor) -> torch.Tensor:
    """Square anchors from 1.25 to 5 strides per level, for yamls giving only a count (`anchors: 3`).

    They are a starting point; fit real ones with anchors.kmean_anchors + anchors.set_anchors.
    """
    sizes = torch.logspace(math.log10(1.25), math.log10(5.0), na) if na > 1 else torch.tensor([2.5])
    px = stride.view(-1, 1) * sizes.view(1, -1)  # (nl, na)
    return torch.stack((px, px), -1)


class GridCache:
    """A head's per-shape grids, cached in `_grids`, stay out of deepcopy and pickle."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_grids'] = {}
        return state


class Detect(GridCache, nn.Module):
    """Buffers: ``anchors`` (nl, na, 2) in grid units (pixels / stride); ``stride`` (nl,), set at build."""

    def __init__(self, nc: int, anchors: list | int, ch: list[int]):
        super().__init__()
        self.nc, self.no, self.nl = int(nc), int(nc) + 5, len(ch)
        if isinstance(anchors, int):
            self.na = anchors
            pixels = None  # filled from the strides in set_stride()
        else:
            if len(anchors) != self.nl or any(len(a) != len(anchors[0]) or len(a) % 2 for a in anchors):
                raise ValueError(f'Detect: anchors must be {self.nl} lists of the same even length '
                                 f'(w,h pairs, one list per input level); got {anchors!r}')
            self.na = len(anchors[0]) // 2
            pixels = torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2)
        self._pixels = pixels
        self.register_buffer('anchors', torch.zeros(self.nl, self.na, 2))
        self.register_buffer('stride', torch.zeros(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self._grids: dict[tuple, torch.Tensor] = {}

    def set_stride(self, stride: torch.Tensor) -> None:
        """Record the level strides and store the pixel anchors in grid units (order checked)."""
        self.stride.copy_(stride.to(self.stride))
        pixels = self._pixels if self._pixels is not None else _placeholder_anchors(self.na, self.stride.cpu())
        self.set_pixel_anchors(pixels)
        self._pixels = None

    def set_pixel_anchors(self, pixels: torch.Tensor) -> None:
        """Replace the anchors with (nl, na, 2) pixel sizes; flipped if their order opposes the strides'."""
        pixels = torch.as_tensor(pixels, dtype=torch.float32).view(self.nl, self.na, 2)
        area = pixels.prod(-1).mean(-1)
        da, ds = area[-1] - area[0], self.stride[-1] - self.stride[0]
        if da != 0 and ds != 0 and (da.sign() != ds.sign().cpu()):
            LOGGER.info('Detect: anchor order reversed to follow stride order')
            pixels = pixels.flip(0)
        self.anchors.copy_(pixels.to(self.anchors) / self.stride.view(-1, 1, 1))

    def anchor_pixels(self) -> torch.Tensor:
        """Anchors in pixels, (nl, na, 2)."""
        return self.anchors * self.stride.view(-1, 1, 1)

    def _grid(self, ny: int, nx: int, like: torch.Tensor) -> torch.Tensor:
        key = (ny, nx, like.device, like.dtype)
        grid = self._grids.get(key)
        if grid is None:  # cached per shape; anchors are not cached (they may be reloaded)
            # integer arange, then cast: the ONNX exporter cannot trace an fp16 arange (Range) on CPU
            y, x = torch.meshgrid(torch.arange(ny, device=like.device), torch.arange(nx, device=like.device),
                                  indexing='ij')
            grid = self._grids[key] = torch.stack((x, y), -1).view(1, 1, ny, nx, 2).to(like.dtype)
        return grid

    def forward(self, x: list[torch.Tensor]):
        raw = []
        for i in range(self.nl):
            p = self.m[i](x[i])
            bs, _, ny, nx = p.shape
            raw.append(p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        out = []
        for i, p in enumerate(raw):
            bs, _, ny, nx, _ = p.shape
            y = p.sigmoid()
            xy = (y[..., :2] * 2 - 0.5 + self._grid(ny, nx, y)) * self.stride[i]
            anchor = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).to(y.dtype)
            wh = (y[..., 2:4] * 2) ** 2 * anchor
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no))
        return torch.cat(out, 1), raw
