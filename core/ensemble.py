"""Weights file(s) -> a model ready for inference: YOLOv5's attempt_load and NMS Ensemble.

`load_for_inference` takes one path or several: a checkpoint (.pt) is rebuilt from its
architecture dict (pruned ones included), cast to float, BN-fused and put in eval mode; an .onnx
file runs through onnxruntime (`core.onnx_model.OnnxModel`). With `augment`, each model is
wrapped in test-time augmentation (`core.tta.TTA`). Several models form an `Ensemble`.
Every result has the eval-model surface: forward -> (pred (B, N, 5+nc), raw or None),
`names`, `nc`, `stride`.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from core.checkpoint import model_from_checkpoint
from core.onnx_model import OnnxModel
from core.tta import TTA

__all__ = ["Ensemble", "load_for_inference", "input_size"]

LOGGER = logging.getLogger(__name__)


class Ensemble(nn.ModuleList):
    """Models whose decoded predictions are concatenated (more boxes per image) before one NMS."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__(models)
        ncs = sorted({int(m.nc) for m in models})
        if len(ncs) != 1:
            raise ValueError(f"ensemble members predict different class counts {ncs}; they must share the classes")
        self.names, self.nc = models[0].names, ncs[0]

    @property
    def stride(self) -> torch.Tensor:
        """The stride set with the largest step, so an image size fitting it fits every member."""
        return max((m.stride for m in self), key=lambda s: float(s.max()))

    def forward(self, x: torch.Tensor):
        return torch.cat([m(x)[0] for m in self], 1), None


def load_model(path: str | Path, device: str | torch.device = "cpu", fuse: bool = True) -> nn.Module:
    """One weights file -> float eval model on `device` (BN folded when `fuse`), or an OnnxModel for .onnx."""
    if Path(path).suffix == ".onnx":
        return OnnxModel(path)
    model = model_from_checkpoint(path)  # float, eval
    return (model.fuse() if fuse else model).to(device)


def load_for_inference(weights: str | Path | Sequence[str | Path], device: str | torch.device = "cpu",
                       augment: bool = False, fuse: bool = True) -> nn.Module:
    """One model, or an Ensemble of several; each wrapped in TTA when `augment`."""
    paths = [weights] if isinstance(weights, (str, Path)) else list(weights)
    if not paths:
        raise ValueError("no weights given")
    models = [load_model(p, device, fuse) for p in paths]
    if augment:
        models = [TTA(m) for m in models]
    return models[0] if len(models) == 1 else Ensemble(models)


def input_size(model: nn.Module, imgsz: int) -> int:
    """The square input size to run `model` at: the size a fixed-shape .onnx (member) was exported for,
    else `imgsz` rounded up to a multiple of the max stride."""
    fixed = {tuple(m.fixed_imgsz) for m in model.modules() if getattr(m, "fixed_imgsz", None)}
    if len(fixed) > 1 or any(h != w for h, w in fixed):
        raise ValueError(f"the ONNX file(s) accept only the input sizes {sorted(fixed)}; export square, equal sizes "
                         "or with dynamic=True")
    if fixed:
        size = fixed.pop()[0]
        if size != imgsz:
            LOGGER.warning(f"imgsz {imgsz} -> {size}: the ONNX file was exported for {size}")
        return size
    stride = int(model.stride.max())
    return max(stride, math.ceil(imgsz / stride) * stride)
