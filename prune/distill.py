"""Output distillation for the finetune: the pruned student learns the unpruned teacher's head outputs.

The teacher (a frozen copy, eval mode, BN on its running statistics) runs on the batch the student trains
on, augmentations included, through the trainer's `Callbacks.extra_loss` hook; pruning keeps the head's
output convs, so both heads give maps of the same shape. Per level, for an anchor head's raw maps
(B, na, ny, nx, 5 + nc) with teacher objectness p = sigmoid(t_obj):
- obj: KL(Bernoulli(p) || Bernoulli(sigmoid(s_obj))), averaged over every cell and anchor: where the teacher
  sees background the student learns to see it too;
- box: sum over x, y, w, h of (sigmoid(s) - sigmoid(t))^2 (the values the decode uses), averaged with weights p:
  a cell's box matters as much as the teacher believes an object is there;
- cls (nc > 1): the per-class Bernoulli KL, averaged over classes, with weights p.
For the anchor-free head (B, 1, ny, nx, 4 reg_max + nc): cls as obj above over every cell and class, and box
as the KL of each side's distance distribution (softmax over reg_max bins), weighted by the teacher's best
class score. Bernoulli KL = BCE(s, p) - BCE(t, p): zero for equal maps, its gradient sigmoid(s) - p. Levels
are averaged; the total is `weight` x that per image x the batch size (the trainer's loss scale).
This is the objectness-weighted output distillation of the YOLO distillation papers, written here.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.callbacks import Callbacks
from core.model.yolo import is_anchor_free

__all__ = ["DEFAULT_DISTILL_WEIGHT", "Distiller", "distill_loss"]

DEFAULT_DISTILL_WEIGHT = 1.0  # see docs/prune.md, "Distillation": measured against 0 (bench/results/distill.md)


def _bernoulli_kl(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s))) from logits; exactly 0 where s == t."""
    p = t.sigmoid()
    return F.binary_cross_entropy_with_logits(s, p, reduction="none") - \
        F.binary_cross_entropy_with_logits(t, p, reduction="none")


def _weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x * w).sum() / w.sum().clamp(min=1e-9)


def _anchor_level(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    w = t[..., 4].sigmoid()
    loss = _bernoulli_kl(s[..., 4], t[..., 4]).mean()
    loss = loss + _weighted_mean((s[..., :4].sigmoid() - t[..., :4].sigmoid()).pow(2).sum(-1), w)
    if s.shape[-1] > 6:  # one class: the class is all objectness (as in core.loss)
        loss = loss + _weighted_mean(_bernoulli_kl(s[..., 5:], t[..., 5:]).mean(-1), w)
    return loss


def _anchor_free_level(s: torch.Tensor, t: torch.Tensor, reg_max: int) -> torch.Tensor:
    nb = 4 * reg_max
    cls = _bernoulli_kl(s[..., nb:], t[..., nb:])
    w = t[..., nb:].sigmoid().amax(-1)
    ls = F.log_softmax(s[..., :nb].unflatten(-1, (4, reg_max)), -1)
    lt = F.log_softmax(t[..., :nb].unflatten(-1, (4, reg_max)), -1)
    box = (lt.exp() * (lt - ls)).sum(-1).mean(-1)  # KL per side, averaged over the 4 sides
    return cls.mean() + _weighted_mean(box, w)


def distill_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], reg_max: int = 0) -> torch.Tensor:
    """The per-image distillation loss between two heads' raw maps (lists per level, same shapes): the mean
    over levels of the module docstring's terms. reg_max > 0: anchor-free maps with that many distance bins."""
    if len(student) != len(teacher) or any(a.shape != b.shape for a, b in zip(student, teacher)):
        raise ValueError(f"distillation: the student's head maps {[tuple(a.shape) for a in student]} differ from "
                         f"the teacher's {[tuple(b.shape) for b in teacher]}: distill a model into a pruned copy "
                         f"of itself (pruning keeps the head's outputs)")
    levels = [_anchor_free_level(s.float(), t.float(), reg_max) if reg_max else _anchor_level(s.float(), t.float())
              for s, t in zip(student, teacher)]
    return torch.stack(levels).mean()


class Distiller:
    """`Callbacks.extra_loss`: weight x distill_loss(student's maps, a frozen teacher's maps on the same batch)
    x batch size. `mean` is the average unweighted per-image loss over the batches seen so far (for the log)."""

    def __init__(self, teacher: nn.Module, weight: float = DEFAULT_DISTILL_WEIGHT):
        if weight < 0:
            raise ValueError(f"distillation weight {weight} must be >= 0")
        self.teacher = copy.deepcopy(teacher).float().eval()
        self.teacher.requires_grad_(False)
        self.reg_max = int(self.teacher.model[-1].reg_max) if is_anchor_free(self.teacher) else 0
        self.weight = float(weight)
        self.total, self.batches = torch.zeros(()), 0

    def __call__(self, imgs: torch.Tensor, preds: Sequence[torch.Tensor]) -> torch.Tensor:
        if next(self.teacher.parameters()).device != imgs.device:
            self.teacher.to(imgs.device)
        with torch.no_grad():
            target = self.teacher(imgs.float())[1]  # eval mode: (decoded predictions, raw maps)
        loss = distill_loss(preds, target, self.reg_max)
        self.total = self.total.to(loss.device) + loss.detach()  # on the device: no sync per batch
        self.batches += 1
        return self.weight * loss * imgs.shape[0]

    @property
    def mean(self) -> float:
        return float(self.total) / max(self.batches, 1)

    def callbacks(self) -> Callbacks:
        return Callbacks(extra_loss=self)
