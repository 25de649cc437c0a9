"""Validation: NMS, matching, 101-point mAP, speeds, COCO-format json; `python -m core.val`.

Defaults agree with COCOeval (one class per box in NMS, COCO's step AP). `multi_label=True` and
`ap_method="yolov5"` reproduce YOLOv5 val.py's numbers instead (`--multi-label --ap-method yolov5`).

COCO json conventions (predictions written by `save_json`, ground truth by `coco_ground_truth`):
- image_id: int(file stem) when every image stem in the dataset is all digits (and they are
  unique), otherwise the image's index in `dataset.im_files` (0-based). One rule per dataset, so
  ids never collide.
- category_id: the class index (0-based), as in the YOLO label files (no COCO-80 -> 91 remap).
- bbox: [x, y, w, h] (top-left corner, size) in ORIGINAL image pixels (letterbox undone).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm

from core import argtypes as t
from core.atomic import atomic_write
from core.boxes import scale_boxes, xywh2xyxy
from core.device import bf16_autocast, select_device
from core.cli import main_guard
from core.data.config import load_data_config
from core.data.loader import create_dataloader
from core.ensemble import input_size, load_for_inference
from core.hyp import load_hyp
from core.metrics import IOU_THRESHOLDS, ap_per_class, fitness, match_predictions, summarize
from core.nms import non_max_suppression


__all__ = ["validate", "coco_ground_truth", "image_ids", "run"]


def image_ids(im_files: Sequence[str | Path]) -> list[int]:
    """COCO image ids for a dataset's files (see the module docstring for the rule)."""
    stems = [Path(f).stem for f in im_files]
    if stems and all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(stems)))


def _name_of(names: Any, c: int) -> str:
    if isinstance(names, dict):
        return str(names.get(c, c))
    if isinstance(names, (list, tuple)) and 0 <= c < len(names):
        return str(names[c])
    return str(c)


def _unpack(batch) -> tuple:
    if isinstance(batch, dict):
        return batch["imgs"], batch["targets"], batch["paths"], batch["shapes"]
    return batch[0], batch[1], batch[2], batch[3]


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's conv weights are (as core.train trains them), else the standard NCHW."""
    for w in model.parameters():
        if w.dim() == 4 and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


def _json_rows(pred: torch.Tensor, input_hw: tuple[int, int], shape, image_id: int) -> list[dict]:
    """COCO result rows for one image's (n, 6) predictions in network-input pixels."""
    boxes = pred[:, :4].clone()
    if shape is not None:  # ((h0, w0), ((rh, rw), (pad_w, pad_h)))
        scale_boxes(input_hw, boxes, shape[0], shape[1])
    boxes[:, 2:] -= boxes[:, :2]  # xyxy -> top-left xywh
    return [{"image_id": image_id, "category_id": int(c), "bbox": [round(float(v), 3) for v in b],
             "score": round(float(s), 5)}
            for b, s, c in zip(boxes.tolist(), pred[:, 4].tolist(), pred[:, 5].tolist())]


@torch.no_grad()
def validate(model: nn.Module, loader, conf_thres: float = 0.001, iou_thres: float = 0.6,
             compute_loss: Callable | None = None, save_json: str | Path | None = None, names=None,
             half: bool = False, max_det: int = 300, progress: bool = True, multi_label: bool = False,
             ap_method: str = "coco", bf16: bool = False, collector: Any = None) -> dict[str, Any]:
    """Score `model` on `loader` (the documented batches: uint8 imgs, normalised targets, paths, shapes).

    Runs in eval mode on the model's device (the model's train/eval mode is restored after).
    `half` runs inference under fp16 autocast on CUDA (weights untouched); ignored on CPU.
    `bf16` runs it under bfloat16 autocast on CPU (as `core.train --bf16` trains); ignored on CUDA.
    Predictions are matched to labels in network-input pixels at IoU 0.50:0.05:0.95.
    `save_json`: path of a COCO results file [{image_id, category_id, bbox [x, y, w, h] in original
    image pixels, score}]; ids as in the module docstring (score it against `coco_ground_truth`).
    `multi_label`: NMS keeps one candidate per (box, class) above conf_thres (YOLOv5's val) instead of
    each box's best class; `ap_method`: "coco" or "yolov5" (core.metrics).
    `collector`: an object that sees what the score is computed from, for pictures (core.plots.ValPlots):
    `batch(index, imgs, targets, paths, predictions)` per batch (uint8 images as loaded, the normalised
    targets, the NMS output list), `image(predictions, labels)` per image ((n, 6) and (m, 5) [cls, xyxy] in
    network-input pixels) and `finish(ap_result)` with core.metrics.ap_per_class's result (its curves).
    Returns {P, R, mAP50, mAP50-95, fitness, val_box, val_obj, val_cls (0 without compute_loss),
    speed_ms: {pre, inference, nms} per image, per_class: {name: {AP50, AP, P, R, Images,
    Instances}}, images, instances}.
    """
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)  # an onnxruntime model (core.onnx_model) has none: CPU tensors
    device = p.device if p is not None else torch.device("cpu")
    use_half = half and device.type == "cuda"
    if half and not use_half:
        warnings.warn("validate(half=True) is ignored on CPU; running fp32")
    names = names if names is not None else getattr(model, "names", None)
    dataset = getattr(loader, "dataset", None)
    ids = {}
    if save_json is not None and dataset is not None and hasattr(dataset, "im_files"):
        ids = {str(f): i for f, i in zip(dataset.im_files, image_ids(dataset.im_files))}
    iouv = IOU_THRESHOLDS.to(device)
    layout = memory_format(model)  # batches in the model's layout: no conversion inside the first conv

    stats: list[tuple] = []  # (tp, conf, pred_cls, target_cls) per image
    loss = torch.zeros(3, device=device)
    dt = [0.0, 0.0, 0.0]
    seen = n_batches = 0
    json_rows: list[dict] = []
    try:
        for batch in tqdm(loader, desc="val", disable=not progress, leave=False):
            imgs, targets, paths, shapes = _unpack(batch)
            t0 = _sync(device)
            imgs = imgs.to(device, non_blocking=True, memory_format=layout)
            imgs = (imgs.half() if use_half else imgs.float()) / 255
            targets = targets.to(device)
            t1 = _sync(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_half), \
                    bf16_autocast(bf16 and device.type == "cpu"):
                pred, raw = model(imgs)
            t2 = _sync(device)
            if compute_loss is not None:
                loss += compute_loss([r.float() for r in raw], targets)[1]
            out = non_max_suppression(pred.float(), conf_thres, iou_thres, max_det=max_det, multi_label=multi_label)
            t3 = _sync(device)
            if collector is not None:
                collector.batch(n_batches, _unpack(batch)[0], targets, paths, out)
            dt[0] += t1 - t0
            dt[1] += t2 - t1
            dt[2] += t3 - t2
            n_batches += 1

            h, w = imgs.shape[2:]
            scale = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
            for si, det in enumerate(out):
                seen += 1
                lab = targets[targets[:, 0] == si, 1:].float()
                labels = torch.cat((lab[:, :1], xywh2xyxy(lab[:, 1:5]) * scale), 1)
                tp = match_predictions(det, labels, iouv)
                stats.append((tp.cpu(), det[:, 4].cpu(), det[:, 5].cpu(), labels[:, 0].cpu()))
                if collector is not None:
                    collector.image(det, labels)
                if save_json is not None:
                    path = str(paths[si])
                    image_id = ids.get(path, int(Path(path).stem) if Path(path).stem.isdigit() else -1)
                    json_rows += _json_rows(det, (h, w), shapes[si] if shapes else None, image_id)
    finally:
        model.train(was_training)

    tp, conf, pcls, tcls = (torch.cat(x, 0).numpy() for x in zip(*stats)) if stats else \
        (np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
    res = ap_per_class(tp, conf, pcls, tcls, ap_method=ap_method)
    if collector is not None:
        collector.finish(res)
    metrics: dict[str, Any] = summarize(res)
    metrics["fitness"] = fitness(metrics)
    loss = (loss / max(n_batches, 1)).cpu().tolist()
    metrics.update(val_box=loss[0], val_obj=loss[1], val_cls=loss[2])
    metrics["speed_ms"] = {k: v / max(seen, 1) * 1e3 for k, v in zip(("pre", "inference", "nms"), dt)}
    images_per_class: dict[int, int] = {}
    for s in stats:
        for c in np.unique(s[3].numpy()).astype(int):
            images_per_class[c] = images_per_class.get(c, 0) + 1
    metrics["per_class"] = {
        _name_of(names, int(c)): {"AP50": float(res["ap"][k, 0]), "AP": float(res["ap"][k].mean()),
                                  "P": float(res["p"][k]), "R": float(res["r"][k]),
                                  "Images": images_per_class.get(int(c), 0), "Instances": int(res["nt"][k])}
        for k, c in enumerate(res["classes"])}
    metrics["images"], metrics["instances"] = seen, int(len(tcls))
    if save_json is not None:
        Path(save_json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(save_json, json.dumps(json_rows))
    return metrics


def _image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as the loader sees the image (EXIF rotation applied)."""
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
            w, h = h, w
    return w, h


def coco_ground_truth(dataset, names: Sequence[str] | dict | None = None) -> dict:
    """COCO ground-truth dict for a dataset (`im_files`, `labels` [cls, cx, cy, w, h] normalised).

    Same image/category ids as `validate(save_json=...)`; boxes [x, y, w, h] in original pixels;
    iscrowd 0. Categories: every class in `names` (or up to the largest label class).
    """
    ids = image_ids(dataset.im_files)
    images, annotations = [], []
    max_cls = -1
    for f, image_id, lab in zip(dataset.im_files, ids, dataset.labels):
        w, h = _image_size(f)
        images.append({"id": image_id, "file_name": Path(f).name, "width": w, "height": h})
        for c, cx, cy, bw, bh in np.asarray(lab, dtype=float).reshape(-1, 5).tolist():
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c),
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
            max_cls = max(max_cls, int(c))
    n = len(names) if names is not None else max_cls + 1
    categories = [{"id": c, "name": _name_of(names, c)} for c in range(n)]
    return {"images": images, "annotations": annotations, "categories": categories}


def print_table(m: dict, names=None) -> None:
    """YOLOv5-style results table: all + per class, then speeds."""
    head = ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    print(f"{head[0]:>22}" + "".join(f"{h:>11}" for h in head[1:]))
    print(f"{'all':>22}{m['images']:>11}{m['instances']:>11}" +
          "".join(f"{m[k]:>11.3g}" for k in ("P", "R", "mAP50", "mAP50-95")))
    for name, c in m["per_class"].items():
        print(f"{name:>22}{c['Images']:>11}{c['Instances']:>11}" +
              "".join(f"{c[k]:>11.3g}" for k in ("P", "R", "AP50", "AP")))
    s = m["speed_ms"]
    print(f"Speed: {s['pre']:.1f}ms pre-process, {s['inference']:.1f}ms inference, {s['nms']:.1f}ms NMS per image")


def run(argv: Sequence[str] | None = None) -> dict:
    """The command's work: parse, validate, print the table; returns the metrics (tests, scripts)."""
    ap = argparse.ArgumentParser(
        prog="python -m core.val", description="Validate a checkpoint: P, R, mAP50, mAP50-95 and speeds.",
        epilog="--save-json writes COCO results: image_id = int(file stem) when every stem in the dataset "
               "is all digits, else the image's 0-based index in the val image list; category_id = class "
               "index (0-based); bbox = [x, y, w, h] in original image pixels. The matching ground truth "
               "is written beside it (*_gt.json) for pycocotools.")
    ap.add_argument("--weights", type=t.existing_file, nargs="+", required=True,
                    help="checkpoint (.pt) or exported .onnx; several = an ensemble (predictions merged before NMS)")
    ap.add_argument("--data", type=t.existing_file, default=None, help="data yaml (default: built-in synthetic dataset)")
    ap.add_argument("--imgsz", type=t.positive_int, default=640)
    ap.add_argument("--batch-size", type=t.positive_int, default=32)
    ap.add_argument("--device", type=t.device, default="cpu", help="cpu or one CUDA index, e.g. 0")
    ap.add_argument("--conf-thres", type=t.unit_interval, default=0.001)
    ap.add_argument("--iou-thres", type=t.unit_interval, default=0.6)
    ap.add_argument("--max-det", type=t.positive_int, default=300)
    ap.add_argument("--save-json", nargs="?", const="", default=None, metavar="PATH",
                    help="write COCO-format predictions (default PATH: <weights>_predictions.json)")
    ap.add_argument("--workers", type=t.non_negative_int, default=2)
    ap.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    ap.add_argument("--augment", action="store_true", help="test-time augmentation (scales 1, 0.83 flipped, 0.67)")
    ap.add_argument("--multi-label", action="store_true", help="NMS keeps every class above --conf-thres per box, "
                    "as YOLOv5's val.py (default: each box's best class)")
    ap.add_argument("--ap-method", choices=["coco", "yolov5"], default="coco", help="coco: COCOeval's 101-point "
                    "step AP; yolov5: YOLOv5's linear interpolation + trapezoids (with --multi-label: YOLOv5's numbers)")
    args = ap.parse_args(argv)
    data = load_data_config(args.data)
    model = load_for_inference(args.weights, select_device(args.device), augment=args.augment)
    imgsz = input_size(model, args.imgsz)
    loader, dataset = create_dataloader(data["val"], imgsz, args.batch_size, load_hyp(), augment=False,
                                        workers=args.workers, shuffle=False, nc=data["nc"], prefix="val: ")
    json_path = None
    if args.save_json is not None:
        json_path = Path(args.save_json or Path(args.weights[0]).with_suffix("").as_posix() + "_predictions.json")
    m = validate(model, loader, args.conf_thres, args.iou_thres, save_json=json_path, names=data["names"],
                 half=args.half, max_det=args.max_det, multi_label=args.multi_label, ap_method=args.ap_method)
    print_table(m)
    if json_path is not None:
        gt_path = json_path.with_name(json_path.stem + "_gt.json")
        atomic_write(gt_path, json.dumps(coco_ground_truth(dataset, data["names"])))
        print(f"COCO predictions: {json_path}\nCOCO ground truth: {gt_path}")
    return m


@main_guard("core.val")
def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
