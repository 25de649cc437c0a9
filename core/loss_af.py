"""The anchor-free head's loss (YOLOv8's design, written here): task-aligned targets, BCE classes, CIoU + DFL boxes.

With the anchor points and the predictions decoded as in `core.model.head_af`, `core.assign.TaskAlignedAssigner`
gives every point a target score per class (0 on background) and, on foreground points, an object box. With
S = the sum of all target scores (at least 1):
- cls = sum over points and classes of BCE(logit, target score) / S (summed, not averaged: YOLOv5 averages
  over targets x classes, which shrinks the class signal as nc grows);
- box = sum over foreground points of (1 - CIoU(pred, object)) x w / S, w = the point's target score;
- dfl = sum over foreground points of w x DFL / S: per side, the object's distance d from the point (in
  strides, clamped to [0, reg_max - 1.01]) lies between bins i = floor(d) and i + 1; DFL is the
  cross-entropy of the side's distribution against those two bins weighted (i + 1 - d) and (d - i)
  (Li et al., Generalized Focal Loss), averaged over the 4 sides.
Returned as ComputeLoss does: (total x B, [box, dfl, cls]); the trainer's `obj` columns (train_obj, val_obj)
hold dfl for this head.

Ablation switches (issue 31: which piece makes the classifier learn), read from the model yaml's optional
`loss_af:` mapping (it travels with the architecture into checkpoints and pruned models); the defaults are
YOLOv8's and are what every model without the key trains with:
- cls_norm: score_sum (above) | targets: YOLOv5's normalisation, the class BCE averaged over positive points x
  classes and scaled by nc/80 (YOLOv5's gain rule), i.e. sum / (max(positives, 1) x 80); negatives still count
  (this head has no objectness to suppress them), box and DFL unchanged;
- targets: quality (the assigner's normalised alignment, an IoU-aware score) | binary: 1 for the assigned
  class on every positive point (box weights and S stay the quality scores);
- assigner: tal (alignment s^0.5 x u^6) | iou: alpha = 0, the alignment is u^6 alone, so the predicted class
  scores no longer choose the positives.

Gains: hyp `box` is in YOLOv5's units (0.05 by default), scaled by BOX_SCALE so the default gives Ultralytics'
7.5 and the same hyp files and search bounds serve both heads (`scaled_gains_af`); `cls` (0.5) and `dfl` (1.5)
are used as they are. The hyps `core.hyp.unused_keys(True)` names (anchors, objectness) do not apply to this head.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.assign import TaskAlignedAssigner
from core.boxes import bbox_iou
from core.model.head_af import anchor_points, integral

__all__ = ["BOX_SCALE", "LOSS_OPTIONS", "ComputeLossAF", "dfl_loss", "loss_options", "scaled_gains_af"]

LOGGER = logging.getLogger(__name__)
BOX_SCALE = 150.0  # hyp box 0.05 (YOLOv5's default) -> 7.5 (Ultralytics' anchor-free default)
TOPK, ALPHA, BETA = 10, 0.5, 6.0  # the task-aligned assigner's, as Ultralytics
# the model yaml's `loss_af:` switches, first value the default (YOLOv8's); see the module docstring
LOSS_OPTIONS = {"cls_norm": ("score_sum", "targets"), "targets": ("quality", "binary"), "assigner": ("tal", "iou")}
YOLOV5_CLASSES = 80  # YOLOv5 scales its class gain by nc / 80


def scaled_gains_af(hyp: Mapping[str, float]) -> dict:
    """The hyp with the anchor-free loss's gains: box x BOX_SCALE; cls and dfl as given."""
    return {**hyp, "box": hyp["box"] * BOX_SCALE}


def dfl_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss: logits (..., 4, reg_max), target distances (..., 4) in bins, inside
    [0, reg_max - 1) -> (...) the mean over the 4 sides."""
    left = target.floor().long()
    w_right = target - left
    logp = logits.log_softmax(-1)
    nll_left = -logp.gather(-1, left[..., None]).squeeze(-1)
    nll_right = -logp.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return (nll_left * (1 - w_right) + nll_right * w_right).mean(-1)


def loss_options(model: nn.Module) -> dict[str, str]:
    """The model's `loss_af:` switches (its architecture dict), defaults filled in; ValueError naming a bad one."""
    model = getattr(model, "module", model)
    given = (getattr(model, "arch", None) or {}).get("loss_af") or {}
    if not isinstance(given, dict):
        raise ValueError(f"model yaml key loss_af: want a mapping of {', '.join(LOSS_OPTIONS)}, got {given!r}")
    for key, value in given.items():
        if key not in LOSS_OPTIONS:
            raise ValueError(f"model yaml key loss_af.{key}: unknown (known: {', '.join(LOSS_OPTIONS)})")
        if value not in LOSS_OPTIONS[key]:
            raise ValueError(f"model yaml key loss_af.{key}: {value!r} is not one of {', '.join(LOSS_OPTIONS[key])}")
    return {key: given.get(key, values[0]) for key, values in LOSS_OPTIONS.items()}


def _head(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP / DataParallel wrapper
    return model.model[-1]


class ComputeLossAF:
    """Callable loss for a model whose last layer is DetectAF.

    `loss(preds, targets)` with preds = list of (B, 1, ny, nx, 4 * reg_max + nc) raw maps and targets = (N, 6)
    [img_index, cls, cx, cy, w, h] normalised, returns (total * B, tensor[box, dfl, cls]). Gains hyp['box'],
    hyp['cls'], hyp['dfl'] are used as given (the trainer scales box: `scaled_gains_af`).
    """

    def __init__(self, model: nn.Module, hyp: Mapping[str, float], label_smoothing: float = 0.0):
        self.det = _head(model)
        self.hyp = hyp
        self.nc, self.reg_max, self.no = int(self.det.nc), int(self.det.reg_max), int(self.det.no)
        self.options = loss_options(model)
        self.assigner = TaskAlignedAssigner(self.nc, TOPK, 0.0 if self.options["assigner"] == "iou" else ALPHA, BETA)
        if self.options != {key: values[0] for key, values in LOSS_OPTIONS.items()}:
            LOGGER.info(f"anchor-free loss switches (model yaml loss_af): {self.options}")
        if label_smoothing:
            LOGGER.warning(f"label smoothing {label_smoothing} ignored: the anchor-free loss's class targets are "
                           f"the assigner's scores")

    def __call__(self, preds: Sequence[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device, bs = preds[0].device, preds[0].shape[0]
        shapes = [(int(p.shape[2]), int(p.shape[3])) for p in preds]
        strides = self.det.stride.tolist()
        x = torch.cat([p.float().reshape(bs, -1, self.no) for p in preds], 1)  # AMP: the loss is fp32
        dist, logits = x.split((4 * self.reg_max, self.nc), -1)
        points, scale = anchor_points(shapes, strides, device)  # grid units of each level, its stride
        ltrb = integral(dist, self.reg_max)
        pred_boxes = torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), -1)  # xyxy, grid units
        size = (shapes[0][1] * strides[0], shapes[0][0] * strides[0])  # input (w, h) in pixels
        gt_labels, gt_boxes, gt_mask = gt_tensors(targets.to(device=device, dtype=torch.float32), bs, size)
        a = self.assigner(logits.detach().sigmoid(), pred_boxes.detach() * scale, points * scale,
                          gt_labels, gt_boxes, gt_mask)
        total = a.scores.sum().clamp(min=1.0)
        cls_targets = a.scores if self.options["targets"] == "quality" else \
            F.one_hot(a.labels, self.nc).to(a.scores.dtype) * a.fg[..., None]
        lcls = F.binary_cross_entropy_with_logits(logits, cls_targets, reduction="sum")
        lcls = lcls / (total if self.options["cls_norm"] == "score_sum" else a.fg.sum().clamp(min=1) * YOLOV5_CLASSES)
        lbox = ldfl = torch.zeros((), device=device)
        if a.fg.any():
            w = a.scores.sum(-1)[a.fg]  # the points' target scores
            boxes = a.boxes / scale  # grid units of each point's level
            iou = bbox_iou(pred_boxes[a.fg], boxes[a.fg], xywh=False, CIoU=True)
            lbox = ((1.0 - iou) * w).sum() / total
            sides = torch.cat((points - boxes[..., :2], boxes[..., 2:] - points), -1)[a.fg]
            sides = sides.clamp(0, self.reg_max - 1.01)
            ldfl = (dfl_loss(dist[a.fg].view(-1, 4, self.reg_max), sides) * w).sum() / total
        lbox, lcls, ldfl = lbox * self.hyp["box"], lcls * self.hyp["cls"], ldfl * self.hyp["dfl"]
        return (lbox + ldfl + lcls) * bs, torch.stack((lbox, ldfl, lcls)).detach()


def gt_tensors(targets: torch.Tensor, bs: int, size: tuple[float, float]):
    """(N, 6) [img, cls, cx, cy, w, h] normalised -> per image, padded to the most objects M: labels (B, M)
    long, boxes (B, M, 4) xyxy in pixels of an input of `size` (w, h), mask (B, M) bool."""
    device = targets.device
    img = targets[:, 0].long()
    counts = torch.bincount(img, minlength=bs)
    m = int(counts.max()) if len(targets) else 0
    labels = torch.zeros(bs, m, dtype=torch.long, device=device)
    boxes = torch.zeros(bs, m, 4, device=device)
    mask = torch.zeros(bs, m, dtype=torch.bool, device=device)
    if m:
        order = torch.argsort(img, stable=True)
        img = img[order]
        slot = torch.arange(len(img), device=device) - (counts.cumsum(0) - counts)[img]
        t = targets[order]
        w, h = size
        xy, wh = t[:, 2:4] * t.new_tensor([w, h]), t[:, 4:6] * t.new_tensor([w, h])
        labels[img, slot] = t[:, 1].long()
        boxes[img, slot] = torch.cat((xy - wh / 2, xy + wh / 2), 1)
        mask[img, slot] = True
    return labels, boxes, mask
