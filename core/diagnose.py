"""Where a detector's mAP is lost: `python -m core.diagnose --weights W.pt --data D.yaml [--imgsz 160]`.

Prints, for one trained checkpoint on one dataset:
- mAP with classes (the usual) and class-agnostic (every class merged, predictions scored by their best
  class): the gap is what classification costs, the rest is finding and placing boxes;
- per-class AP50-95 and a confusion table: each labelled object's most confident prediction among those
  overlapping it at IoU >= 0.5 (conf >= --conf), by predicted class, plus the objects nothing found;
- how training assigns targets (ComputeLoss.build_targets on --batches augmented training batches): the
  share of objects given at least one anchor on each level and on none, and the loss gains after the
  YOLOv5 scaling by class count, image size and level count (what the trainer uses);
- what a mosaic does to the training objects (core/data/automosaic.py): the share of kept labels that show
  less than half of their object, and the mosaic probability the trainer derives from it (the assignment
  batches above use it, as training did unless it ran with --no-automosaic).
A diagnostic for people, not a test.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
from torch import nn

from core.boxes import box_iou, xywh2xyxy
from core.checkpoint import load_checkpoint
from core.cli import main_guard
from core.data.automosaic import apply_automosaic
from core.data.config import load_data_config
from core.data.loader import create_dataloader
from core.hyp import load_hyp
from core.loss import ComputeLoss, scaled_gains
from core.model.yolo import is_anchor_free
from core.nms import non_max_suppression
from core.train import _build_model
from core.val import validate


class ClassAgnostic(nn.Module):
    """A model whose class scores are replaced by one column, the best class's, so that NMS and matching
    ignore the class: what mAP would be with perfect classification of the boxes found."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        pred, raw = self.model(x)
        # one class: NMS scores by the objectness column alone, so that column carries obj * best class
        score = pred[..., 4:5] * pred[..., 5:].amax(-1, keepdim=True)
        return torch.cat((pred[..., :4], score, torch.ones_like(score)), -1), raw


class OneClassLoader:
    """Batches of `loader` with every label's class set to 0."""

    def __init__(self, loader):
        self.loader, self.dataset = loader, loader.dataset

    def __iter__(self):
        for imgs, targets, *rest in self.loader:
            targets = targets.clone()
            targets[:, 1] = 0
            yield (imgs, targets, *rest)

    def __len__(self):
        return len(self.loader)


@torch.no_grad()
def confusion(model: nn.Module, loader, nc: int, conf: float = 0.25) -> np.ndarray:
    """(nc, nc + 1) counts: row = true class, column = class of the most confident prediction overlapping
    the object at IoU >= 0.5 (conf >= `conf`), last column = nothing found."""
    counts = np.zeros((nc, nc + 1), np.int64)
    model.eval()
    for imgs, targets, *_ in loader:
        imgs = imgs.float() / 255
        pred, _ = model(imgs)
        out = non_max_suppression(pred, conf, 0.6)
        h, w = imgs.shape[2:]
        scale = torch.tensor([w, h, w, h])
        for si, det in enumerate(out):
            lab = targets[targets[:, 0] == si]
            if not len(lab):
                continue
            boxes = xywh2xyxy(lab[:, 2:6]) * scale
            iou = box_iou(boxes, det[:, :4]) if len(det) else torch.zeros(len(lab), 0)
            for k, c in enumerate(lab[:, 1].long().tolist()):
                hits = (iou[k] >= 0.5).nonzero().flatten() if iou.shape[1] else torch.zeros(0, dtype=torch.long)
                col = nc if not len(hits) else int(det[hits[det[hits, 4].argmax()], 5])
                counts[c, col] += 1
    return counts


def assignment(model: nn.Module, loader, loss_hyp: dict, batches: int) -> dict:
    """Share of labelled objects given >= 1 (anchor, cell) on each level, and on none, over `batches`
    augmented training batches (build_targets run per object, so every count is that object's)."""
    compute = ComputeLoss(model, loss_hyp)
    per_level, none, total = np.zeros(compute.nl), 0, 0
    model.train()
    for b, (imgs, targets, *_) in enumerate(loader):
        if b == batches:
            break
        with torch.no_grad():
            raw = model(imgs.float() / 255)  # train mode: the raw level outputs only
        for t in targets:
            counts = [len(tcls) for tcls in compute.build_targets(raw, t.view(1, 6))[0]]
            per_level += np.array(counts) > 0
            none += not any(counts)
            total += 1
    model.eval()
    return {"objects": total, "per_level": (per_level / max(total, 1)).tolist(), "none": none / max(total, 1)}


def main_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--conf", type=float, default=0.05, help="confidence for the confusion table")
    ap.add_argument("--batches", type=int, default=8, help="training batches for the assignment counts")
    ap.add_argument("--hyp", default=None, help="hyp of the training (default: the checkpoint's)")
    return ap.parse_args(argv)


@main_guard("core.diagnose", log_level=logging.WARNING)  # its printed findings only, not the loaders' lines
def main(argv=None) -> int:
    args = main_args(argv)
    cfg = load_data_config(args.data)
    nc, names = int(cfg["nc"]), list(cfg["names"])
    ckpt = load_checkpoint(args.weights)
    hyp = load_hyp(args.hyp or ckpt.get("hyp"))
    net, _, _ = _build_model(args.weights, nc, names)
    net.eval()
    val_loader, _ = create_dataloader(cfg["val"], args.imgsz, args.batch_size, hyp, augment=False, workers=0, nc=nc)
    m = validate(net, val_loader, progress=False)
    agnostic = validate(ClassAgnostic(net), OneClassLoader(val_loader), progress=False)
    print(f"{args.weights} on {args.data} at {args.imgsz} px")
    print(f"mAP50-95 {m['mAP50-95']:.4f} (mAP50 {m['mAP50']:.4f}); class-agnostic {agnostic['mAP50-95']:.4f} "
          f"(mAP50 {agnostic['mAP50']:.4f}): classification costs {agnostic['mAP50-95'] - m['mAP50-95']:.4f}")
    print("per class AP50-95: " + ", ".join(f"{k} {v['AP']:.3f}" for k, v in m["per_class"].items()))
    counts = confusion(net, val_loader, nc, args.conf)
    found = counts[:, :nc].sum()
    print(f"confusion at conf {args.conf}, IoU 0.5 (rows true, columns predicted, last: not found); "
          f"{found}/{counts.sum()} objects found, {np.trace(counts[:, :nc])}/{found} of them with the right class")
    print("      " + " ".join(f"{n[:5]:>5s}" for n in names) + "  none")
    for c in range(nc):
        print(f"{names[c][:5]:>5s} " + " ".join(f"{v:5d}" for v in counts[c]))
    if is_anchor_free(net):
        print("assignment: not counted for the anchor-free head (its task-aligned targets follow its own "
              "predictions: core/assign.py)")
        return 0
    loss_hyp = scaled_gains(hyp, int(net.model[-1].nl), nc, args.imgsz)
    train_loader, train_set = create_dataloader(cfg["train"], args.imgsz, 16, hyp, augment=True, workers=0,
                                                shuffle=True, nc=nc)
    mosaic = apply_automosaic(train_set, args.imgsz, hyp)
    print(mosaic.message(hyp["mosaic"]))
    a = assignment(net, train_loader, loss_hyp, args.batches)
    print(f"assignment over {a['objects']} augmented training objects: on level " +
          ", ".join(f"P{3 + i} {s:.0%}" for i, s in enumerate(a["per_level"])) + f"; on none {a['none']:.1%}")
    print(f"loss gains used in training: box {loss_hyp['box']:.4f}, obj {loss_hyp['obj']:.4f}, "
          f"cls {loss_hyp['cls']:.4f} (hyp {hyp['box']}, {hyp['obj']}, {hyp['cls']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
