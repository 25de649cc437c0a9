"""Detection metrics: prediction/label matching, 101-point AP per class, fitness.

Two AP rules over the same precision envelope (both are in use, and they differ by a few points):
- "coco" (default): COCOeval's step rule. Precision is read at recall 0, 0.01, ..., 1 at the first point
  reaching that recall, 0 beyond the highest recall reached; AP is the mean of the 101 values.
- "yolov5": YOLOv5's `compute_ap`. The curve is extended to (recall 0, precision 1) and (recall 1,
  precision 0), interpolated linearly at the same 101 recalls and integrated with the trapezoid rule,
  so recall past the last detection still earns area on the line down to (1, 0), and a perfect
  curve scores 0.995 (the last trapezoid ends at the (1, 0) sentinel).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from core.boxes import box_iou

__all__ = ["METRIC_KEYS", "FITNESS_WEIGHTS", "AP_METHODS", "fitness", "ap_per_class", "compute_ap",
           "match_predictions", "precision_at_recall", "summarize"]

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # mAP50-95 thresholds
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recThrs
AP_METHODS = ("coco", "yolov5")
METRIC_KEYS = ("P", "R", "mAP50", "mAP50-95")
FITNESS_WEIGHTS = (0.0, 0.0, 0.1, 0.9)


def match_predictions(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor = IOU_THRESHOLDS) -> torch.Tensor:
    """True-positive matrix (n_det, len(iouv)) bool for one image.

    detections (n, 6) [x1, y1, x2, y2, conf, cls]; labels (m, 5) [cls, x1, y1, x2, y2], same pixels.
    Per IoU threshold t (as YOLOv5's process_batch): candidate pairs need the same class and
    IoU >= t; each detection keeps its highest-IoU label, then each label is given to the most
    confident detection proposing it. One label matches at most one detection.
    """
    n, m = detections.shape[0], labels.shape[0]
    iouv = iouv.to(detections.device)
    tp = torch.zeros((n, iouv.numel()), dtype=torch.bool, device=detections.device)
    if n == 0 or m == 0:
        return tp
    iou = box_iou(labels[:, 1:].float(), detections[:, :4].float())  # (m, n)
    iou = iou * (labels[:, 0:1] == detections[:, 5].view(1, -1))  # other class -> IoU 0
    best_iou, best_label = iou.max(0)  # per detection
    # Confidence rank of each detection (0 = most confident) decides which proposer a label accepts.
    rank = torch.empty(n, dtype=torch.long, device=detections.device)
    rank[detections[:, 4].argsort(descending=True, stable=True)] = torch.arange(n, device=detections.device)
    for k, t in enumerate(iouv.tolist()):
        ok = best_iou >= t
        if not ok.any():
            break  # higher thresholds cannot match either
        # Per label, the proposer with the smallest rank: scatter-reduce min over label ids.
        win = torch.full((m,), n, dtype=torch.long, device=detections.device)
        win.scatter_reduce_(0, best_label[ok], rank[ok], reduce="amin")
        tp[:, k] = ok & (win[best_label] == rank)
    return tp


def compute_ap(recall: np.ndarray, precision: np.ndarray, method: str = "coco") -> float:
    """101-point AP from a score-ordered recall/precision curve, by `method` (module docstring).

    "coco": precision is made monotone (the envelope: max precision at any recall >= r), then read
    at recall r = 0, 0.01, ..., 1 at the first point whose recall reaches r (0 beyond the last
    recall reached), and averaged; exactly as COCOeval.accumulate. "yolov5": as YOLOv5's compute_ap.
    """
    if method not in AP_METHODS:
        raise ValueError(f"AP method {method!r} is not one of {', '.join(AP_METHODS)}")
    if recall.size == 0:  # no detection: no area (YOLOv5 skips such a class too)
        return 0.0
    q = precision_at_recall(recall, precision, RECALL_POINTS, method)
    if method == "yolov5":  # trapezoids
        return float(((q[1:] + q[:-1]) / 2 * np.diff(RECALL_POINTS)).sum())
    return float(q.mean())


def precision_at_recall(recall: np.ndarray, precision: np.ndarray, at: np.ndarray, method: str = "coco") -> np.ndarray:
    """The precision curve `compute_ap` integrates, read at the recalls `at`: "coco" the envelope at the
    first point reaching each recall (0 past the highest), "yolov5" its linear interpolation with the
    sentinels. Its mean over a fine uniform grid of [0, 1] is the AP to within about 1/101: COCO's AP
    averages 101 samples of the same decreasing step curve."""
    if recall.size == 0:
        return np.zeros_like(at, dtype=float)
    if method == "yolov5":
        r = np.concatenate(([0.0], recall, [1.0]))
        p = np.maximum.accumulate(np.concatenate(([1.0], precision, [0.0]))[::-1])[::-1]
        return np.interp(at, r, p)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, at, side="left")
    q = np.zeros(len(at))
    valid = idx < recall.size
    q[valid] = envelope[idx[valid]]
    return q


def _smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box filter over a fraction f of the points (odd width), edges padded with edge values."""
    nf = round(len(y) * f * 2) // 2 + 1
    p = np.ones(nf // 2)
    yp = np.concatenate((p * y[0], y, p * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def ap_per_class(tp: np.ndarray | torch.Tensor, conf, pred_cls, target_cls, eps: float = 1e-16,
                 ap_method: str = "coco") -> dict:
    """Per-class AP at each IoU threshold, and P/R/F1 at one shared confidence.

    tp (n, T) bool per prediction and IoU threshold; conf, pred_cls (n,); target_cls (m,) over the
    whole dataset. Only classes present in target_cls are scored (as COCO). P and R are read on
    confidence-sampled curves (1000 points) at the confidence maximising the smoothed mean F1.
    `ap_method`: "coco" or "yolov5" (module docstring).
    Returns dict: classes (k,), nt (labels per class), p, r, f1 (k,), ap (k, T), conf (the chosen
    confidence), px (1000,), p_curve, r_curve, f1_curve (k, 1000) against confidence px, and pr_curve
    (k, 1000): precision at recall px at IoU 0.5, read by the AP rule, so its mean over px is AP50 to
    within 0.011 (`precision_at_recall`).
    """
    tp, conf, pred_cls, target_cls = (np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a)
                                      for a in (tp, conf, pred_cls, target_cls))
    tp = tp.astype(bool)
    if tp.ndim == 1:
        tp = tp[:, None]
    order = np.argsort(-conf, kind="mergesort")  # stable, as COCOeval
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, nt = np.unique(target_cls, return_counts=True)
    k, nthr = classes.shape[0], tp.shape[1]
    px = np.linspace(0, 1, 1000)
    ap = np.zeros((k, nthr))
    p_curve, r_curve, pr_curve = np.zeros((k, 1000)), np.zeros((k, 1000)), np.zeros((k, 1000))
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        if not sel.any():
            continue
        tpc = tp[sel].cumsum(0)
        fpc = (~tp[sel]).cumsum(0)
        recall = tpc / (nt[ci] + eps)
        precision = tpc / (tpc + fpc)
        # Curves vs confidence (x decreasing in conf, hence the negations) at IoU 0.5.
        r_curve[ci] = np.interp(-px, -conf[sel], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-px, -conf[sel], precision[:, 0], left=1)
        pr_curve[ci] = precision_at_recall(recall[:, 0], precision[:, 0], px, ap_method)
        for j in range(nthr):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j], ap_method)
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = int(_smooth(f1_curve.mean(0), 0.1).argmax()) if k else 0
    return {"classes": classes.astype(int), "nt": nt, "p": p_curve[:, best], "r": r_curve[:, best],
            "f1": f1_curve[:, best], "ap": ap, "conf": float(px[best]), "px": px,
            "p_curve": p_curve, "r_curve": r_curve, "f1_curve": f1_curve, "pr_curve": pr_curve}


def summarize(ap_result: Mapping) -> dict[str, float]:
    """Dataset-level P, R, mAP50, mAP50-95 (means over the scored classes) from ap_per_class."""
    ap = ap_result["ap"]
    if len(ap_result["classes"]) == 0:
        return dict.fromkeys(METRIC_KEYS, 0.0)
    return {"P": float(ap_result["p"].mean()), "R": float(ap_result["r"].mean()),
            "mAP50": float(ap[:, 0].mean()), "mAP50-95": float(ap.mean(1).mean())}


def fitness(m: Mapping[str, float] | np.ndarray | Sequence[float], w: Sequence[float] = FITNESS_WEIGHTS):
    """Weighted sum over [P, R, mAP50, mAP50-95]: a float for a metrics dict, an array for
    an array (..., 4) of rows."""
    w = np.asarray(w, dtype=float)
    if w.shape != (4,):
        raise ValueError(f"fitness weights must be 4 numbers for {list(METRIC_KEYS)}, got {w.tolist()}")
    if isinstance(m, Mapping):
        missing = [key for key in METRIC_KEYS if key not in m]
        if missing:
            raise KeyError(f"fitness: metrics dict lacks {missing}")
        return float(sum(wi * float(m[key]) for wi, key in zip(w, METRIC_KEYS)))
    x = np.asarray(m, dtype=float)
    return (x[..., :4] * w).sum(-1)
