"""Pure-torch non-maximum suppression (no torchvision) and the YOLO post-processing around it."""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from core.boxes import box_area, xywh2xyxy

__all__ = ["nms", "batched_nms", "non_max_suppression"]

BLOCK = 2048  # boxes per tile: bounds the IoU matrices to BLOCK x BLOCK (and kept x BLOCK)
# Above this many boxes batched_nms runs one NMS per class: its IoU matrices shrink from n^2 to the sum of the
# per-class counts squared, which outweighs the per-class overhead (~0.1 ms each) from ~500 boxes on (1575
# boxes of 10 classes, as an untrained yolov5n at 160 px gives: 29 ms -> 3 ms per image, same result).
OFFSET_MAX = 512


def _iou_tile(a: torch.Tensor, area_a: torch.Tensor, b: torch.Tensor, area_b: torch.Tensor) -> torch.Tensor:
    # Per-coordinate 2-D ops (in place where possible): ~3x less memory traffic than (n, m, 2) tensors.
    w = torch.min(a[:, None, 2], b[None, :, 2]).sub_(torch.max(a[:, None, 0], b[None, :, 0])).clamp_(0)
    h = torch.min(a[:, None, 3], b[None, :, 3]).sub_(torch.max(a[:, None, 1], b[None, :, 1])).clamp_(0)
    inter = w.mul_(h)
    return inter / (area_a[:, None] + area_b[None, :]).sub_(inter).add_(1e-7)


def _greedy(over: np.ndarray) -> np.ndarray:
    """Greedy pass over a score-sorted block; over[i, j] = IoU(i, j) > thr. Returns a keep mask."""
    n = over.shape[0]
    removed = np.zeros(n, dtype=bool)
    keep = np.zeros(n, dtype=bool)
    for i in range(n):
        if removed[i]:
            continue
        keep[i] = True
        removed |= over[i]  # only later boxes matter; earlier ones are already decided
    return keep


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Greedy NMS on xyxy boxes: indices of kept boxes, sorted by decreasing score.

    A box is dropped when its IoU with a higher-scoring kept box exceeds iou_thres (strictly,
    as torchvision). Boxes are processed in score-sorted tiles of BLOCK: each tile is first
    suppressed by the boxes already kept, then resolved greedily on its own IoU matrix, so memory
    stays O(BLOCK^2 + kept * BLOCK) and the Python loop only runs inside a tile.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order].float()
    areas = box_area(boxes)
    kept: list[torch.Tensor] = []  # positions in `order`
    kept_boxes = boxes[:0]
    kept_areas = areas[:0]
    for start in range(0, boxes.shape[0], BLOCK):
        blk, blk_area = boxes[start:start + BLOCK], areas[start:start + BLOCK]
        alive = torch.ones(blk.shape[0], dtype=torch.bool, device=boxes.device)
        for k in range(0, kept_boxes.shape[0], BLOCK):
            iou = _iou_tile(kept_boxes[k:k + BLOCK], kept_areas[k:k + BLOCK], blk, blk_area)
            alive &= ~(iou > iou_thres).any(0)
        cand = alive.nonzero().squeeze(1)
        if cand.numel() == 0:
            continue
        cb, ca = blk[cand], blk_area[cand]
        over = (_iou_tile(cb, ca, cb, ca) > iou_thres).triu_(1).cpu().numpy()
        keep = torch.from_numpy(_greedy(over)).to(boxes.device)
        kept.append(cand[keep] + start)
        kept_boxes = torch.cat((kept_boxes, cb[keep]))
        kept_areas = torch.cat((kept_areas, ca[keep]))
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return order[torch.cat(kept)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """NMS within each class: kept indices sorted by decreasing score.

    Up to OFFSET_MAX boxes, classes are separated by shifting each class's boxes by
    class * (max coordinate + 1) and running one NMS; beyond that, one NMS per class (cost then
    grows with the per-class count squared, not the total squared).
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if n <= OFFSET_MAX:
        # Offset relative to the box extent (not a fixed 7680) keeps float32 coordinates precise.
        span = boxes.max() - torch.clamp(boxes.min(), max=0) + 1
        return nms(boxes + classes.to(boxes.dtype)[:, None] * span, scores, iou_thres)
    keep = [idx[nms(boxes[idx], scores[idx], iou_thres)]
            for idx in (torch.nonzero(classes == c).squeeze(1) for c in classes.unique())]
    keep = torch.cat(keep)
    return keep[scores[keep].argsort(descending=True, stable=True)]


def non_max_suppression(pred: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        max_det: int = 300, agnostic: bool = False, multi_label: bool = False,
                        max_nms: int = 30000, time_limit: float | None = None) -> list[torch.Tensor]:
    """Filter raw detections (B, N, 5+nc) [cx, cy, w, h, obj, cls...] (obj/cls after sigmoid).

    conf = obj * cls; with one class (nc = 1) conf = obj: the loss trains no class term then (YOLOv5's
    neither), so the class score is an untrained constant and must not scale the confidence. Per image: drop conf <= conf_thres, keep the max_nms most confident
    candidates, class-wise NMS (all classes together when agnostic), at most max_det results.
    multi_label: one candidate per (box, class) above conf_thres instead of the best class only.
    time_limit (seconds, optional): stop early with a warning; later images return empty.
    Returns per image a (n, 6) tensor [x1, y1, x2, y2, conf, cls], sorted by conf.
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres} is outside [0, 1]")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres={iou_thres} is outside [0, 1]")
    bs = pred.shape[0]
    out = [torch.zeros((0, 6), device=pred.device) for _ in range(bs)]
    t0 = time.time()
    candidates = pred[..., 4] > conf_thres
    for xi in range(bs):
        x = pred[xi][candidates[xi]].float()
        if x.shape[0] == 0:
            continue
        cls_conf = x[:, 5:] * x[:, 4:5] if x.shape[1] > 6 else x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (cls_conf > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], cls_conf[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = cls_conf.max(1, keepdim=True)
            x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if x.shape[0] == 0:
            continue
        x = x[x[:, 4].argsort(descending=True, stable=True)[:max_nms]]
        if agnostic:
            keep = nms(x[:, :4], x[:, 4], iou_thres)
        else:
            keep = batched_nms(x[:, :4], x[:, 4], x[:, 5], iou_thres)
        out[xi] = x[keep[:max_det]]
        if time_limit is not None and time.time() - t0 > time_limit:
            warnings.warn(f"NMS time limit {time_limit:.3f}s exceeded after {xi + 1}/{bs} images")
            break
    return out
