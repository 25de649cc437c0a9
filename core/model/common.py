"""Building blocks of the YOLOv5 (v6/v7) detector: Conv, Bottleneck, C3, SPPF, Concat.

Every block takes explicit channel counts so a pruned architecture (some convs with fewer
output channels, some C3s with fewer bottlenecks) builds with the same module names as the
full one. Blocks with inner convs accept ``channels``: a dict from the inner conv's relative
name (``'cv1'``, ``'m.0.cv2'``, ...) to its output channels; missing names take the default.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["autopad", "Conv", "DWConv", "Bottleneck", "C3", "SPPF", "Concat"]

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'same' padding for an odd kernel k with dilation d (explicit p wins)."""
    if p is not None:
        return p
    k_eff = d * (k - 1) + 1 if d > 1 else k
    return k_eff // 2


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU. After ``fuse()`` the BN is folded into the conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None,
                 g: int = 1, d: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), dilation=d, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        # Out of place, as YOLOv5: an in-place SiLU makes autograd clone its input to keep it for backward,
        # a copy per layer that cost 4-6% of a CPU training step (README, Speed levers).
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:  # None once fused
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BN affine transform and running stats into the conv weight and a new bias."""
        if self.bn is None:
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, bias=True).to(conv.weight)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
        fused.weight.requires_grad_(conv.weight.requires_grad)
        self.conv = fused
        self.bn = None


class DWConv(Conv):
    """Depthwise Conv: groups = gcd(c1, c2), so c1 == c2 is one filter per channel (MobileNet's 3x3).

    Groups follow the channel counts, so a pruned architecture (fewer channels) rebuilds consistently.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


def _conv_out(channels: dict[str, int] | None, name: str, default: int) -> int:
    return int(channels.get(name, default)) if channels else default


class Bottleneck(nn.Module):
    """cv1 (1x1, hidden) -> cv2 (3x3, c2), plus the input when ``add``.

    ``add`` defaults to YOLOv5's rule (shortcut and c1 == c2); builders pass it explicitly so a
    pruned block keeps the shortcut decided by the unpruned architecture.
    """

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 hidden: int | None = None, add: bool | None = None):
        super().__init__()
        c_ = int(c2 * e) if hidden is None else hidden
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = bool(shortcut and c1 == c2) if add is None else bool(add)
        if self.add and c1 != c2:
            raise ValueError(f'Bottleneck with shortcut needs cv2 out ({c2}) == input ({c1})')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block: cv3(cat(m(cv1(x)), cv2(x))) with n Bottlenecks in m (n may be 0).

    ``name`` (e.g. 'model.2') only makes error messages name the offending conv.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1,
                 e: float = 0.5, channels: dict[str, int] | None = None, name: str = 'C3'):
        super().__init__()
        c_ = int(c2 * e)
        a = _conv_out(channels, 'cv1', c_)
        self.cv1 = Conv(c1, a, 1, 1)
        blocks, cur = [], a
        for j in range(n):
            hidden = _conv_out(channels, f'm.{j}.cv1', c_)
            # a shortcut bottleneck must return as many channels as it receives
            out = _conv_out(channels, f'm.{j}.cv2', cur if shortcut else c_)
            if shortcut and out != cur:
                src = f'{name}.cv1' if j == 0 else f'{name}.m.{j - 1}.cv2'
                raise ValueError(
                    f'{name}.m.{j}.cv2: {out} output channels, but its shortcut adds the {cur}-channel '
                    f'output of {src}; give both convs the same channel count')
            blocks.append(Bottleneck(cur, out, shortcut, g, e=1.0, hidden=hidden, add=shortcut))
            cur = out
        self.m = nn.Sequential(*blocks)
        b = _conv_out(channels, 'cv2', c_)
        self.cv2 = Conv(c1, b, 1, 1)
        self.cv3 = Conv(cur + b, _conv_out(channels, 'cv3', c2), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): cv1, three chained k x k max-pools, concat of all four, cv2."""

    def __init__(self, c1: int, c2: int, k: int = 5, channels: dict[str, int] | None = None):
        super().__init__()
        c_ = _conv_out(channels, 'cv1', c1 // 2)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, _conv_out(channels, 'cv2', c2), 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(_pool_layout(x))
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


def _pool_layout(x: torch.Tensor) -> torch.Tensor:
    """x in channels_last for the pools when it is an NCHW CPU tensor: PyTorch's CPU max_pool2d runs several
    times faster on NHWC (README, Benchmarks). A max picks an element, so the result is bit-identical;
    torch.cat gives the NCHW layout back. Left alone on CUDA and in ONNX export / tracing."""
    if x.device.type != 'cpu' or x.dim() != 4 or torch.jit.is_tracing() or torch.jit.is_scripting():
        return x
    return x.contiguous(memory_format=torch.channels_last)


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension``."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)
