"""The detection confusion matrix: predicted class against true class, with a background row and column.

`matrix[p, t]` counts, per image, one-to-one matches between predictions with confidence above `conf` and
labels: pairs are taken greedily by IoU, highest first, each prediction and each label at most once, among
pairs with IoU above `iou_thres` whatever their classes (so a box found with the wrong class lands off the
diagonal). Index `nc` is the background: `matrix[nc, t]` a label nothing matched (a missed object, FN),
`matrix[p, nc]` a prediction that matched no label (a false positive). YOLOv5's layout (rows predicted,
columns true); unlike its version, predictions in an image where nothing matched still count as background
false positives.
"""
from __future__ import annotations

import numpy as np
import torch

from core.boxes import box_iou

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """Counts of (predicted, true) class pairs over the images given to `update`; background at index nc."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.nc, self.conf, self.iou_thres = int(nc), float(conf), float(iou_thres)
        self.matrix = np.zeros((self.nc + 1, self.nc + 1), dtype=np.int64)

    def update(self, detections: torch.Tensor, labels: torch.Tensor) -> None:
        """One image: detections (n, 6) [x1, y1, x2, y2, conf, cls], labels (m, 5) [cls, x1, y1, x2, y2]
        in the same pixels."""
        det = detections[detections[:, 4] > self.conf].detach().cpu().float()
        lab = labels.detach().cpu().float()
        pred_cls, true_cls = det[:, 5].long().numpy(), lab[:, 0].long().numpy()
        matched_det = np.zeros(len(det), bool)
        matched_lab = np.zeros(len(lab), bool)
        if len(det) and len(lab):
            iou = box_iou(lab[:, 1:5], det[:, :4]).numpy()  # (m, n)
            li, di = np.nonzero(iou > self.iou_thres)
            for k in np.argsort(-iou[li, di], kind="stable"):  # greedy: highest IoU first
                i, j = li[k], di[k]
                if not matched_lab[i] and not matched_det[j]:
                    matched_lab[i] = matched_det[j] = True
                    self.matrix[pred_cls[j], true_cls[i]] += 1
        np.add.at(self.matrix, (self.nc, true_cls[~matched_lab]), 1)  # missed objects
        np.add.at(self.matrix, (pred_cls[~matched_det], self.nc), 1)  # false positives

    def normalized(self) -> np.ndarray:
        """Each column (true class, or background) divided by its total: where each true class's objects went."""
        total = self.matrix.sum(0, keepdims=True)
        return self.matrix / np.maximum(total, 1)

    def tp_fp_fn(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per class: correct (the diagonal), predicted as it but not it (row minus diagonal), missed or taken
        for another (column minus diagonal)."""
        tp = np.diag(self.matrix)[: self.nc]
        return tp, self.matrix.sum(1)[: self.nc] - tp, self.matrix.sum(0)[: self.nc] - tp
