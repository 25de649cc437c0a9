"""Task-aligned assignment (TOOD; the assigner of YOLOv8): which anchor points learn which object, and how much.

For every object g and anchor point a (a cell centre, in pixels) with the prediction at a:
- candidates: the points strictly inside g's box;
- alignment t(a, g) = s^alpha * u^beta, s = the predicted score of g's class at a, u = CIoU(g, a's predicted
  box) clamped at 0 (Ultralytics' choice; CIoU = IoU for concentric boxes of one aspect ratio);
- positives of g: its `topk` candidates by t (ties and t = 0 excluded: such a point would add nothing to the
  loss, its target score being 0);
- a point positive for several objects keeps the one it overlaps most (highest u among them);
- target score of a positive point: t(a, g) / max_a' t(a', g) * max_a' u(a', g) over g's positives, so each
  object's best-aligned point aims at the best IoU reached for it, and the rest scale down in proportion.
The target scores are the class targets (one-hot times the score) and weigh the box losses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.boxes import bbox_iou

__all__ = ["Assignment", "TaskAlignedAssigner"]


@dataclass
class Assignment:
    """Per image b and anchor point n: `fg` (B, N) bool, `gt_index` (B, N) the object assigned (0 where
    background), `labels` (B, N) its class, `boxes` (B, N, 4) its xyxy box, `scores` (B, N, nc) the class
    targets (one-hot x the normalised alignment; all 0 on background)."""

    fg: torch.Tensor
    gt_index: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor


class TaskAlignedAssigner:
    """`assign(pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask) -> Assignment` (no gradient).

    pred_scores (B, N, nc) probabilities; pred_boxes (B, N, 4) xyxy; points (N, 2) xy, in the boxes' units;
    gt_labels (B, M) class ids; gt_boxes (B, M, 4) xyxy; gt_mask (B, M) which of the M slots hold an object.
    """

    def __init__(self, nc: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9):
        self.nc, self.topk, self.alpha, self.beta, self.eps = int(nc), int(topk), float(alpha), float(beta), eps

    @torch.no_grad()
    def __call__(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor) -> Assignment:
        bs, n, _ = pred_scores.shape
        m = gt_boxes.shape[1]
        if m == 0:
            return self._background(pred_scores, pred_boxes)
        gt_labels = gt_labels.long().clamp(0, self.nc - 1)
        inside = self._inside(points, gt_boxes) & gt_mask.bool()[..., None]  # (B, M, N)
        iou, metric = self._metrics(pred_scores, pred_boxes, gt_labels, gt_boxes, inside)
        pos = self._topk(metric) & inside & (metric > 0)
        pos = self._one_object_per_point(pos, iou)
        fg = pos.any(1)  # (B, N)
        gt_index = pos.to(torch.uint8).argmax(1)  # the one True along M (0 where background)
        best_metric = (metric * pos).amax(-1, keepdim=True)  # (B, M, 1) over each object's positives
        best_iou = (iou * pos).amax(-1, keepdim=True)
        norm = (metric * pos * best_iou / (best_metric + self.eps)).amax(1)  # (B, N)
        labels = gt_labels.gather(1, gt_index)
        boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
        scores = torch.nn.functional.one_hot(labels, self.nc).to(pred_scores.dtype) * (norm * fg)[..., None]
        return Assignment(fg, gt_index, labels, boxes, scores)

    def _inside(self, points: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """(B, M, N): point n strictly inside box m (by more than eps on every side)."""
        lt = points[None, None] - gt_boxes[:, :, None, :2]
        rb = gt_boxes[:, :, None, 2:] - points[None, None]
        return torch.cat((lt, rb), -1).amin(-1) > self.eps

    def _metrics(self, pred_scores, pred_boxes, gt_labels, gt_boxes, inside):
        """(iou, alignment), each (B, M, N), computed on the candidate pairs only (0 elsewhere)."""
        b, g, a = inside.nonzero(as_tuple=True)
        iou = torch.zeros(inside.shape, dtype=pred_boxes.dtype, device=pred_boxes.device)
        metric = torch.zeros_like(iou)
        if b.numel():
            u = bbox_iou(gt_boxes[b, g], pred_boxes[b, a], xywh=False, CIoU=True).clamp(0)
            s = pred_scores[b, a, gt_labels[b, g]]
            iou[b, g, a] = u
            metric[b, g, a] = s.pow(self.alpha) * u.pow(self.beta)
        return iou, metric

    def _topk(self, metric: torch.Tensor) -> torch.Tensor:
        """(B, M, N): among each object's `topk` largest alignments."""
        k = min(self.topk, metric.shape[-1])
        idx = metric.topk(k, dim=-1).indices
        return torch.zeros_like(metric, dtype=torch.bool).scatter_(-1, idx, True)

    @staticmethod
    def _one_object_per_point(pos: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
        """A point positive for several objects keeps only the one with the highest IoU among them."""
        shared = pos.sum(1, keepdim=True) > 1  # (B, 1, N)
        if not shared.any():
            return pos
        best = torch.where(pos, iou, torch.full_like(iou, -1.0)).argmax(1, keepdim=True)  # (B, 1, N)
        only_best = torch.zeros_like(pos).scatter_(1, best, True)
        return torch.where(shared, only_best & pos, pos)

    def _background(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor) -> Assignment:
        bs, n, _ = pred_scores.shape
        zeros = torch.zeros(bs, n, dtype=torch.long, device=pred_scores.device)
        return Assignment(zeros.bool(), zeros, zeros.clone(), torch.zeros_like(pred_boxes),
                          torch.zeros_like(pred_scores))
