"""Channel coupling graph of a YOLO model, traced from its layers' `from` indices.

The trace walks the layers like the forward pass, but carries channel *layouts* instead
of tensors. A layout is a list of segments; a segment is the tuple of Conv names whose
outputs are summed into those channels (one name, or several after residual adds).
Convs summed by a shortcut share one mask (a group); Concat, C3's cv3 input and SPPF's
4x concat become segment lists (channel offsets); Upsample and max-pool pass layouts
through. Detect's output convs are consumers only: they are never pruned. The anchor-free head (DetectAF)
has two branches per level, each Conv -> Conv -> output Conv2d: its Convs read only the level's input and each
other, so they are pruned like any conv (the first reads the neck's layout); its output convs are consumers only.

A depthwise conv (groups == in == out channels) maps channel i to channel i, so it joins its
producer's group: both keep the same channels and the compact conv has groups = kept channels.
Other grouped convs mix channels within groups that a mask would cut apart: refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

INPUT = ""  # segment name of the image input (never pruned)
Segment = tuple[str, ...]
Layout = list[Segment]


class GraphError(ValueError):
    """The model holds a layer or connection the pruner does not understand."""


@dataclass
class Consumer:
    """A conv reading a traced layout: a prunable Conv (with BN) or a head's output conv (bias)."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    inputs: Layout


@dataclass
class PruneGraph:
    """Prunable convs, their coupling groups, every consumer's input layout and the shortcut blocks."""

    convs: dict[str, nn.Module] = field(default_factory=dict)  # Conv modules in forward order
    consumers: list[Consumer] = field(default_factory=list)
    shortcuts: list[str] = field(default_factory=list)  # Bottleneck names with a residual add
    in_channels: int = 3
    _parent: dict[str, str] = field(default_factory=dict)

    def width(self, name: str) -> int:
        """Channel count of a segment member (a Conv name or INPUT)."""
        return self.in_channels if name == INPUT else self.convs[name].conv.out_channels

    def root(self, name: str) -> str:
        while self._parent[name] != name:
            name = self._parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self._parent[rb] = ra

    def groups(self) -> list[list[str]]:
        """Coupled convs (sharing one output mask), in forward order of their first member."""
        out: dict[str, list[str]] = {}
        for name in self.convs:
            out.setdefault(self.root(name), []).append(name)
        return list(out.values())


def _kind(m: nn.Module) -> str:
    return type(m).__name__


def is_depthwise(conv: nn.Conv2d) -> bool:
    """One filter per channel: groups == in_channels == out_channels > 1."""
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


CONV_KINDS = ("Conv", "DWConv")


class _Tracer:
    def __init__(self, graph: PruneGraph):
        self.g = graph

    def conv(self, name: str, m: nn.Module, x: Layout) -> Layout:
        depthwise = is_depthwise(m.conv)
        if m.conv.groups != 1 and not depthwise:
            raise GraphError(f"{name}: grouped conv (groups={m.conv.groups}, {m.conv.in_channels} -> "
                             f"{m.conv.out_channels} channels) cannot be channel-pruned; only depthwise "
                             f"convs (DWConv with equal in and out channels) and groups=1 can")
        if depthwise and (len(x) != 1 or INPUT in x[0]):
            raise GraphError(f"{name}: a depthwise conv must read one conv's output (not the image or a concat)")
        self.g.consumers.append(Consumer(name, m.conv, m.bn, x))
        self.g.convs[name] = m
        self.g._parent[name] = name
        if depthwise:  # channel i reads only input channel i: keep exactly the producer's channels
            for member in x[0]:
                self.g.union(member, name)
        return [(name,)]

    def bottleneck(self, name: str, m: nn.Module, x: Layout) -> Layout:
        h = self.conv(f"{name}.cv2", m.cv2, self.conv(f"{name}.cv1", m.cv1, x))
        if not m.add:
            return h
        if len(x) != 1 or INPUT in x[0]:
            raise GraphError(f"{name}: a shortcut over a concatenated input is not supported")
        for member in x[0]:
            self.g.union(member, f"{name}.cv2")
        self.g.shortcuts.append(name)
        return [x[0] + (f"{name}.cv2",)]

    def c3(self, name: str, m: nn.Module, x: Layout) -> Layout:
        a = self.conv(f"{name}.cv1", m.cv1, x)
        for k, block in enumerate(m.m):
            a = self.bottleneck(f"{name}.m.{k}", block, a)
        b = self.conv(f"{name}.cv2", m.cv2, x)
        return self.conv(f"{name}.cv3", m.cv3, a + b)

    def sppf(self, name: str, m: nn.Module, x: Layout) -> Layout:
        a = self.conv(f"{name}.cv1", m.cv1, x)  # max-pool keeps a constant channel constant
        return self.conv(f"{name}.cv2", m.cv2, a * 4)

    def detect(self, name: str, m: nn.Module, xs: list[Layout]) -> None:
        for i, x in enumerate(xs):
            self.g.consumers.append(Consumer(f"{name}.m.{i}", m.m[i], None, x))

    def detect_af(self, name: str, m: nn.Module, xs: list[Layout]) -> None:
        for i, x in enumerate(xs):
            for kind, branch in (("box", m.box[i]), ("cls", m.cls[i])):
                prefix = f"{name}.{kind}.{i}"
                h = self.conv(f"{prefix}.1", branch[1], self.conv(f"{prefix}.0", branch[0], x))
                self.g.consumers.append(Consumer(f"{prefix}.2", branch[2], None, h))


def trace(model: nn.Module, ch: int | None = None) -> PruneGraph:
    """Trace a core `Model` (Conv, DWConv, C3, SPPF, Bottleneck, Concat, Upsample, Detect, DetectAF layers).

    ch: image channels; default the model's own (`arch['ch']`, 3 if absent).
    """
    if ch is None:
        ch = int(getattr(model, "arch", {}).get("ch", 3))
    graph = PruneGraph(in_channels=ch)
    tr = _Tracer(graph)
    outputs: list[Layout] = []
    x: Layout = [(INPUT,)]
    for layer in model.model:
        i, f, kind, name = layer.i, layer.f, _kind(layer), f"model.{layer.i}"
        if isinstance(f, int):
            inp = x if f == -1 else outputs[f]
        else:
            inp = [x if j == -1 else outputs[j] for j in f]
        if kind in CONV_KINDS:
            x = tr.conv(name, layer, inp)
        elif kind == "C3":
            x = tr.c3(name, layer, inp)
        elif kind == "SPPF":
            x = tr.sppf(name, layer, inp)
        elif kind == "Bottleneck":
            x = tr.bottleneck(name, layer, inp)
        elif kind == "Sequential":  # a Conv or Bottleneck row with number > 1: children model.i.j
            x = inp
            for j, child in enumerate(layer):
                step = tr.conv if _kind(child) in CONV_KINDS else tr.bottleneck
                x = step(f"{name}.{j}", child, x)
        elif kind == "Concat":
            x = [seg for part in inp for seg in part]
        elif kind in ("Upsample", "MaxPool2d"):
            x = inp
        elif kind == "Detect":
            tr.detect(name, layer, inp)
            x = []
        elif kind == "DetectAF":
            tr.detect_af(name, layer, inp)
            x = []
        else:
            raise GraphError(f"layer {i} ({name}): module type {kind} is not supported by the pruner")
        outputs.append(x)
    return graph
