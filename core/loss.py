"""YOLOv5 (v6) detection loss: anchor matching with neighbour cells, CIoU box, BCE obj/cls."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from core.boxes import bbox_iou

__all__ = ["ComputeLoss", "scaled_gains"]

# Per-level objectness weights (P3 finest first): small objects are rarer per cell, weigh them up.
BALANCE = {3: [4.0, 1.0, 0.4]}
BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]

# Centre cell and the four neighbours (x-1, y-1, x+1, y+1) as offsets in cells, times g=0.5.
_G = 0.5
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * _G


class FocalLoss(nn.Module):
    """Focal loss around a BCEWithLogitsLoss: loss * alpha_t * (1 - p_t) ** gamma, then mean."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma, self.alpha = gamma, alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # the modulation needs per-element losses

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        p = torch.sigmoid(pred)
        p_t = true * p + (1 - true) * (1 - p)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative class targets under label smoothing eps."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def scaled_gains(hyp: Mapping[str, float], nl: int, nc: int, imgsz: int) -> dict:
    """The hyp with YOLOv5's loss gains for this model and data: box, cls and obj scaled to the number of
    levels (3 / nl), cls to the class count (nc / 80: its BCE is a mean over classes), obj to the image size
    ((imgsz / 640) ** 2). What the trainer hands ComputeLoss; the checkpoint keeps the user's hyp."""
    return {**hyp, "box": hyp["box"] * 3 / nl, "cls": hyp["cls"] * nc / 80 * 3 / nl,
            "obj": hyp["obj"] * (imgsz / 640) ** 2 * 3 / nl}


def _detect_head(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP / DataParallel wrapper
    return model.model[-1]


class ComputeLoss:
    """Callable loss for a model whose last layer is Detect (nl, na, no, anchors in grid units).

    `loss(preds, targets)` with preds = list of (B, na, ny, nx, 5+nc) raw maps and targets =
    (N, 6) [img_index, cls, cx, cy, w, h] normalised, returns (total * B, tensor[box, obj, cls]).
    Gains hyp['box'], hyp['obj'], hyp['cls'] are used as given (the trainer scales them).
    """

    gr = 1.0  # objectness target = (1 - gr) + gr * IoU

    def __init__(self, model: nn.Module, hyp: Mapping[str, float], label_smoothing: float = 0.0):
        self.det = _detect_head(model)
        self.hyp = hyp
        self.na, self.nl = int(self.det.na), int(self.det.nl)
        self.nc = int(self.det.no) - 5
        device = next(model.parameters()).device
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(hyp["cls_pw"])], device=device))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(hyp["obj_pw"])], device=device))
        gamma = float(hyp.get("fl_gamma", 0.0))
        if gamma > 0:
            self.bce_cls, self.bce_obj = FocalLoss(self.bce_cls, gamma), FocalLoss(self.bce_obj, gamma)
        self.cp, self.cn = smooth_bce(label_smoothing)
        if self.nl in BALANCE:
            self.balance = BALANCE[self.nl]
        elif self.nl <= len(BALANCE_DEFAULT):
            self.balance = BALANCE_DEFAULT[: self.nl]
        else:
            raise ValueError(f"ComputeLoss: Detect has {self.nl} levels; at most {len(BALANCE_DEFAULT)} supported")

    @property
    def anchors(self) -> torch.Tensor:
        # Read live: anchors may be re-fitted or moved to another device after construction.
        return self.det.anchors

    def __call__(self, preds: Sequence[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = preds[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        lbox = torch.zeros(1, device=device)
        lobj = torch.zeros(1, device=device)
        lcls = torch.zeros(1, device=device)
        tcls, tbox, indices, anch = self.build_targets(preds, targets)

        for i, pi in enumerate(preds):
            pi = pi.float()  # AMP: the loss is always computed in fp32
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5  # same decode as Detect
                pwh = (pwh.sigmoid() * 2) ** 2 * anch[i]
                iou = bbox_iou(torch.cat((pxy, pwh), 1), tbox[i], CIoU=True)
                lbox = lbox + (1.0 - iou).mean()
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * iou.detach().clamp(0)
                if self.nc > 1:  # a single class is all objectness
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=device), tcls[i]] = self.cp
                    lcls = lcls + self.bce_cls(pcls, t)
            lobj = lobj + self.bce_obj(pi[..., 4], tobj) * self.balance[i]

        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds: Sequence[torch.Tensor], targets: torch.Tensor):
        """Assign targets to (image, anchor, cell) per level.

        A target goes to every anchor whose w/h ratio (either way) is below hyp['anchor_t'], in
        its own cell and in the two nearest neighbour cells (the x and y neighbours on the side of
        the cell the centre is closer to), since the decode lets xy reach -0.5..1.5 of a cell.
        Returns per level: class ids, boxes (xy offset from the cell, wh) in grid units,
        indices (b, a, gj, gi), anchors (n, 2).
        """
        device = targets.device
        na, nt = self.na, targets.shape[0]
        anchors_all = self.anchors.to(device=device, dtype=torch.float32)
        tcls, tbox, indices, anch = [], [], [], []
        ai = torch.arange(na, device=device, dtype=torch.float32).view(na, 1).expand(na, nt)
        # (na, nt, 7): img, cls, x, y, w, h, anchor index
        t_all = torch.cat((targets.unsqueeze(0).expand(na, nt, 6), ai.unsqueeze(2)), 2)
        offsets_all = _OFFSETS.to(device)
        anchor_t = float(self.hyp["anchor_t"])

        for i in range(self.nl):
            anchors = anchors_all[i]
            ny, nx = preds[i].shape[2], preds[i].shape[3]
            gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=device, dtype=torch.float32)
            t = t_all * gain  # normalised -> grid units
            if nt:
                r = t[..., 4:6] / anchors[:, None]  # (na, nt, 2)
                t = t[torch.max(r, 1 / r).max(2)[0] < anchor_t]
                gxy = t[:, 2:4]
                gxy_inv = gain[[2, 3]] - gxy  # distance from the far edges
                left, up = ((gxy % 1 < _G) & (gxy > 1)).T
                right, down = ((gxy_inv % 1 < _G) & (gxy_inv > 1)).T
                sel = torch.stack((torch.ones_like(left), left, up, right, down))  # (5, n)
                t = t.unsqueeze(0).expand(5, -1, -1)[sel]
                offsets = offsets_all[:, None].expand(5, sel.shape[1], 2)[sel]
            else:
                t = t_all[0]
                offsets = torch.zeros((0, 2), device=device)

            b, c = t[:, 0].long(), t[:, 1].long()
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp_(0, nx - 1)
            gj = gij[:, 1].clamp_(0, ny - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
