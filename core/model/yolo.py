"""Parse an architecture dict (YOLOv5 yaml content + channel/repeat overrides) into a detector.

The architecture dict is plain data: ``nc, depth_multiple, width_multiple, anchors, backbone,
head`` and optionally ``channels: {conv_name: out}`` and ``repeats: {'model.i': n}``. Module
names resolve through a fixed table and the only names allowed among args are ``nc``,
``anchors``, ``None``, ``True``, ``False`` (substituted, never evaluated), so loading an
architecture never runs code.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from core.yaml_file import load_yaml
from torch import nn

from .common import C3, SPPF, Bottleneck, Concat, Conv, DWConv
from .head import Detect
from .head_af import DetectAF

__all__ = ["Model", "MODULES", "HEADS", "is_anchor_free", "load_arch", "make_divisible", "parse_model"]

MODULES: dict[str, type[nn.Module]] = {
    'Conv': Conv, 'DWConv': DWConv, 'Bottleneck': Bottleneck, 'C3': C3, 'SPPF': SPPF, 'Concat': Concat,
    'nn.Upsample': nn.Upsample, 'Upsample': nn.Upsample, 'Detect': Detect, 'DetectAF': DetectAF,
}
HEADS = (Detect, DetectAF)  # the last layer of every architecture: anchor-based or anchor-free
_CONSTANTS = {'None': None, 'True': True, 'False': False}
STRIDE_PROBE = 256  # image size of the zero-image pass that measures the strides


def make_divisible(x: float, divisor: int = 8) -> int:
    """Smallest multiple of divisor >= x."""
    return int(math.ceil(x / divisor) * divisor)


def _plain(obj, where: str = 'arch'):
    """Deep copy made of dict/list/str/int/float/bool/None only (tuples become lists)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v, f'{where}.{k}') for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f'{where}[{i}]') for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, 'item') and getattr(obj, 'ndim', 1) == 0:  # numpy / torch scalar
        return obj.item()
    raise TypeError(f'{where}: {type(obj).__name__} is not plain data (dict/list/str/int/float)')


def load_arch(arch: dict | str | Path) -> dict:
    """Architecture dict from a yaml path or a dict, as a plain deep copy."""
    if isinstance(arch, (str, Path)):
        path = Path(arch)
        if not path.is_file():
            raise FileNotFoundError(f'model yaml not found: {path}')
        return _plain(load_yaml(path, 'model yaml (nc, anchors, backbone, head)'), str(path))
    if not isinstance(arch, dict):
        raise TypeError(f'arch must be a dict or a yaml path, got {type(arch).__name__}')
    return _plain(arch)


def _check_from(i: int, f, name: str) -> list[int]:
    """Absolute indices of the layers feeding layer i; ValueError naming the layer and value."""
    idx = f if isinstance(f, list) else [f]
    if not idx or any(isinstance(j, bool) or not isinstance(j, int) for j in idx):
        raise ValueError(f'layer {i} ({name}): bad from {f!r}: expected an int or a list of ints')
    out = []
    for j in idx:
        a = i + j if j < 0 else j
        if not 0 <= a < i and not (j == -1 and i == 0):
            raise ValueError(f'layer {i} ({name}): bad from index {j!r}: must name an earlier layer '
                             f'(0..{i - 1}) or be negative (relative)')
        out.append(a if not (j == -1 and i == 0) else -1)
    return out


def _sub(channels: dict[str, int], prefix: str) -> dict[str, int]:
    p = prefix + '.'
    return {k[len(p):]: v for k, v in channels.items() if k.startswith(p)}


def parse_model(arch: dict, ch: int) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list; returns (nn.Sequential, sorted indices whose outputs are kept)."""
    for key in ('nc', 'backbone', 'head'):
        if key not in arch:
            raise ValueError(f'architecture misses {key!r}')
    if 'anchors' not in arch and _head_name(arch) != 'DetectAF':
        raise ValueError("architecture misses 'anchors' (only the anchor-free head, DetectAF, needs none)")
    nc, anchors = int(arch['nc']), arch.get('anchors')
    gd, gw = float(arch.get('depth_multiple', 1.0)), float(arch.get('width_multiple', 1.0))
    channels = dict(arch.get('channels') or {})
    repeats = dict(arch.get('repeats') or {})
    for k, v in list(channels.items()) + list(repeats.items()):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k in channels else 0):
            raise ValueError(f'override {k!r}: {v!r} is not a valid count (channels >= 1, repeats >= 0)')
    names = {'nc': nc, 'anchors': anchors, **_CONSTANTS}

    layers, save = [], set()
    act, nom = [], []  # output channels per layer: actual (after overrides) and nominal (yaml)
    for i, row in enumerate(list(arch['backbone']) + list(arch['head'])):
        if not isinstance(row, list) or len(row) != 4:
            raise ValueError(f'layer {i}: expected [from, number, module, args], got {row!r}')
        f, n, mname, args = row
        if not isinstance(mname, str) or mname not in MODULES:
            raise ValueError(f'layer {i}: unknown module {mname!r}; known: {sorted(MODULES)}')
        if not isinstance(n, int) or n < 1:
            raise ValueError(f'layer {i} ({mname}): number must be an int >= 1, got {n!r}')
        args = [names.get(a, a) if isinstance(a, str) else a for a in (args or [])]
        src = _check_from(i, f, mname)
        cin = [ch if j == -1 else act[j] for j in src]
        cin_nom = [ch if j == -1 else nom[j] for j in src]
        n = max(round(n * gd), 1) if n > 1 else n
        prefix = f'model.{i}'
        mtype = MODULES[mname]
        if mtype in (Conv, DWConv, Bottleneck, C3, SPPF):
            c1, c1_nom, c2 = cin[0], cin_nom[0], make_divisible(args[0] * gw, 8)
            if mtype is C3:
                n = repeats.get(prefix, n)
                module = C3(c1, c2, n, *args[1:], channels=_sub(channels, prefix), name=prefix)
            elif mtype is SPPF:
                module = SPPF(c1, c2, *args[1:], channels=_sub(channels, prefix))
            else:
                module = _repeat(mtype, n, c1, c1_nom, c2, args[1:], channels, prefix)
            c_out = _last_conv(module).conv.out_channels
            c_nom = c2
        elif mtype is Concat:
            module, c_out, c_nom = Concat(*args), sum(cin), sum(cin_nom)
        elif mtype is nn.Upsample:
            module, c_out, c_nom = nn.Upsample(*args), cin[0], cin_nom[0]
        else:  # Detect or DetectAF
            if i != len(arch['backbone']) + len(arch['head']) - 1:
                raise ValueError(f'layer {i}: {mname} must be the last layer')
            if mtype is DetectAF:
                module = DetectAF(args[0], *args[1:2], ch=cin, ch_nom=cin_nom, channels=_sub(channels, prefix))
            else:
                module = Detect(args[0], args[1], cin)
            c_out = c_nom = 0
        if n > 1 and mtype not in (Conv, DWConv, Bottleneck, C3):
            raise ValueError(f'layer {i} ({mname}): number must be 1, got {n}')
        module.i, module.f, module.type, module.n = i, f, mname, n
        module.args = [nc, module.na, cin] if mtype is Detect else [nc, module.reg_max, cin] if mtype is DetectAF \
            else args
        module.np = sum(p.numel() for p in module.parameters())
        save.update(a for j, a in zip(f if isinstance(f, list) else [f], src) if j != -1)
        layers.append(module)
        act.append(c_out)
        nom.append(c_nom)
    if not layers or not isinstance(layers[-1], HEADS):
        raise ValueError('the last layer of the architecture must be Detect or DetectAF')
    seq = nn.Sequential(*layers)
    _check_overrides(seq, channels, repeats)
    return seq, sorted(save)


def _head_name(arch: dict) -> str | None:
    """The module name of the architecture's last row (its head), or None when it has none."""
    rows = list(arch.get('backbone') or []) + list(arch.get('head') or [])
    return rows[-1][2] if rows and isinstance(rows[-1], list) and len(rows[-1]) == 4 else None


def is_anchor_free(model: nn.Module | dict | str | Path) -> bool:
    """Whether a Model, an architecture dict or a model yaml ends in the anchor-free head (DetectAF)."""
    if isinstance(model, nn.Module):
        model = getattr(model, 'module', model)  # DDP / DataParallel wrapper
        return isinstance(model.model[-1], DetectAF)
    return _head_name(load_arch(model)) == 'DetectAF'


def _repeat(mtype, n: int, c1: int, c1_nom: int, c2: int, extra: list, channels: dict, prefix: str):
    """Conv, DWConv or Bottleneck repeated n times (chained); names 'model.i' or 'model.i.j'."""
    mods = []
    for j in range(n):
        name = prefix if n == 1 else f'{prefix}.{j}'
        if mtype in (Conv, DWConv):
            mods.append(mtype(c1, channels.get(name, c2), *extra))
        else:
            shortcut = bool(extra[0]) if extra else True
            add = shortcut and c1_nom == c2  # decided by the unpruned architecture
            out = channels.get(f'{name}.cv2', c1 if add else c2)
            if add and out != c1:
                raise ValueError(f'{name}.cv2: {out} output channels, but its shortcut adds its '
                                 f'{c1}-channel input; give the producer the same channel count')
            hidden = channels.get(f'{name}.cv1', int(c2 * (extra[2] if len(extra) > 2 else 0.5)))
            g = extra[1] if len(extra) > 1 else 1
            mods.append(Bottleneck(c1, out, shortcut, g, hidden=hidden, add=add))
        c1 = mods[-1].cv2.conv.out_channels if mtype is Bottleneck else mods[-1].conv.out_channels
        c1_nom = c2  # every repeat after the first maps c2 -> c2 in the unpruned architecture
    return mods[0] if n == 1 else nn.Sequential(*mods)


def _last_conv(module: nn.Module) -> Conv:
    if isinstance(module, Conv):
        return module
    if isinstance(module, nn.Sequential):
        return _last_conv(module[-1])
    if isinstance(module, C3):
        return module.cv3
    return module.cv2  # SPPF, Bottleneck


def _check_overrides(seq: nn.Sequential, channels: dict, repeats: dict) -> None:
    convs = {f'model.{n}' for n, m in seq.named_modules() if isinstance(m, Conv)}
    bad = sorted(set(channels) - convs)
    if bad:
        raise ValueError(f'channels: {bad} name no Conv of this architecture (e.g. model.0, model.2.cv1)')
    c3s = {f'model.{i}' for i, m in enumerate(seq) if isinstance(m, C3)}
    bad = sorted(set(repeats) - c3s)
    if bad:
        raise ValueError(f'repeats: {bad} name no C3 layer of this architecture ({sorted(c3s)})')


class Model(nn.Module):
    """YOLOv5-style detector built from an architecture dict or a model yaml path."""

    def __init__(self, arch: dict | str | Path, ch: int = 3, nc: int | None = None):
        super().__init__()
        arch = load_arch(arch)
        if nc is not None:
            arch['nc'] = int(nc)
        arch['ch'] = int(arch.get('ch', ch))
        self.model, self.save = parse_model(arch, arch['ch'])
        self.arch = arch
        self.nc = int(arch['nc'])
        names = arch.get('names')
        self.names = [str(n) for n in names] if isinstance(names, list) and len(names) == self.nc \
            else [str(k) for k in range(self.nc)]
        self.model[-1].set_stride(self._probe_stride(arch['ch']))
        self.initialize_biases()

    @property
    def stride(self) -> torch.Tensor:
        return self.model[-1].stride

    @property
    def na(self) -> int:
        return self.model[-1].na

    @torch.no_grad()
    def _probe_stride(self, ch: int) -> torch.Tensor:
        """Level strides from a zero-image pass (eval mode, so BN running stats stay untouched)."""
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            feats = self._forward_layers(torch.zeros(1, ch, STRIDE_PROBE, STRIDE_PROBE, device=p.device))
        finally:
            self.train(was_training)
        return torch.tensor([STRIDE_PROBE / x.shape[-2] for x in feats])

    def _forward_layers(self, x: torch.Tensor, upto_detect: bool = True):
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if upto_detect and m is self.model[-1]:
                return x
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def forward(self, x: torch.Tensor):
        """Training: list of (B, na, ny, nx, no) raw maps; eval: (pred (B, N, 5+nc), raw list)."""
        return self._forward_layers(x, upto_detect=False)

    @torch.no_grad()
    def initialize_biases(self, class_freq=None) -> None:
        """Set Detect biases to priors: objectness ~8 objects per 640^2 image; classes from
        ``class_freq`` (per-class label counts or frequencies: bias log(cf / cf.sum())) or YOLOv5 v7.0's
        log(0.6 / (nc - 0.99999)) (v6: nc - 0.99). A class with no labels counts as half the rarest seen class
        so its bias stays finite. With one class the frequency says nothing (log 1 = 0, a score factor of
        0.5): YOLOv5's prior (sigmoid ~1) is used, and NMS scores a one-class model by objectness alone.
        The biases are set, not added to the conv's random init as YOLOv5 does, so that the trainer can set
        them again from the labels (docs/recipe-vs-yolov5.md)."""
        m = self.model[-1]
        if isinstance(m, DetectAF):  # no objectness: the class scores carry the prior (core/model/head_af.py)
            m.initialize_biases(class_freq if m.nc > 1 else None)
            return
        if class_freq is not None and m.nc > 1:
            cf = torch.as_tensor(class_freq, dtype=torch.float64).flatten()
            if cf.numel() != m.nc:
                raise ValueError(f'class_freq has {cf.numel()} entries, model has nc={m.nc}')
            seen = cf[cf > 0]
            cf = torch.where(cf > 0, cf, seen.min() / 2 if seen.numel() else torch.ones(()))
            cls_bias = torch.log(cf / cf.sum()).float()
        else:
            cls_bias = torch.full((m.nc,), math.log(0.6 / (m.nc - 0.99999)))
        for conv, s in zip(m.m, m.stride.tolist()):
            b = conv.bias.view(m.na, -1)
            b[:, 4] = math.log(8 / (640 / s) ** 2)
            b[:, 5:5 + m.nc] = cls_bias.to(b)

    def fuse(self) -> 'Model':
        """Fold every Conv's BN into its conv, in place."""
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self
