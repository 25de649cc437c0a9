"""`python -m core.detect`: run a checkpoint or an exported .onnx on images; draw boxes, write YOLO labels.

For each image of --source (a file or a folder, searched like a data yaml's sources) it writes
into the run folder the image with its detections drawn (OpenCV) and, with --save-txt,
`labels/<stem>.txt` with one row per detection `cls cx cy w h conf` normalised to the original
image (YOLOv5's `--save-txt --save-conf` format; without --save-conf no conf column).
Images are letterboxed to a square `imgsz` exactly as validation does.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from core import argtypes as t
from core.boxes import scale_boxes
from core.cli import main_guard
from core.data.augment import letterbox
from core.data.cache import decode_image
from core.data.files import list_image_files
from core.device import select_device
from core.ensemble import input_size, load_for_inference
from core.nms import non_max_suppression
from core.run_dir import next_run_dir

__all__ = ["detect", "read_letterboxed", "run"]

LOGGER = logging.getLogger(__name__)


def read_letterboxed(path: str | Path, imgsz: int) -> tuple[torch.Tensor, np.ndarray, tuple]:
    """(network input (1, 3, imgsz, imgsz) float RGB in [0, 1], original BGR image, ratio_pad).

    ratio_pad = ((gain_h, gain_w), (pad_w, pad_h)) as `core.boxes.scale_boxes` takes it.
    """
    img0 = decode_image(str(path))
    img, (rw, rh), pad = letterbox(img0, imgsz, auto=False)
    chw = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
    return torch.from_numpy(chw)[None].float() / 255, img0, ((rh, rw), pad)


def _color(c: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class (golden-ratio hue steps)."""
    hue = int((c * 0.618034 % 1.0) * 179)
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 230]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw(img: np.ndarray, det: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Copy of img with (n, 6) [x1, y1, x2, y2, conf, cls] boxes (original pixels) and labels drawn."""
    out = img.copy()
    lw = max(1, round(sum(img.shape[:2]) / 600))
    for x1, y1, x2, y2, conf, c in det.tolist():
        color, c = _color(int(c)), int(c)
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, color, lw, cv2.LINE_AA)
        label = f"{names[c] if c < len(names) else c} {conf:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, lw / 3, max(lw - 1, 1))
        top = p1[1] - th - 3 >= 0
        q = (p1[0] + tw, p1[1] - th - 3 if top else p1[1] + th + 3)
        cv2.rectangle(out, p1, q, color, -1, cv2.LINE_AA)
        cv2.putText(out, label, (p1[0], p1[1] - 2 if top else p1[1] + th + 2), cv2.FONT_HERSHEY_SIMPLEX,
                    lw / 3, (255, 255, 255), max(lw - 1, 1), cv2.LINE_AA)
    return out


def yolo_rows(det: np.ndarray, shape: tuple[int, int], save_conf: bool) -> str:
    """YOLO label rows `cls cx cy w h [conf]` normalised to an image of shape (h, w)."""
    h, w = shape
    rows = []
    for x1, y1, x2, y2, conf, c in det.tolist():
        vals = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h] + ([conf] if save_conf else [])
        rows.append(f"{int(c)} " + " ".join(f"{v:.6f}" for v in vals) + "\n")
    return "".join(rows)


@torch.no_grad()
def detect(model: torch.nn.Module, files: Sequence[str], imgsz: int, out_dir: Path, conf_thres: float = 0.25,
           iou_thres: float = 0.45, max_det: int = 1000, save_txt: bool = False, save_conf: bool = False) -> list[dict]:
    """Detect on each file; write drawn images (and labels) under out_dir. Returns per image
    {'image', 'detections' (n, 6) original pixels, 'saved'}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if save_txt:
        (out_dir / "labels").mkdir(exist_ok=True)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    results = []
    for f in files:
        x, img0, ratio_pad = read_letterboxed(f, imgsz)
        pred = model(x.to(device))[0]
        det = non_max_suppression(pred.float(), conf_thres, iou_thres, max_det=max_det)[0]
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], img0.shape[:2], ratio_pad)
        det = det.cpu().numpy()
        saved = out_dir / Path(f).name
        cv2.imwrite(str(saved), draw(img0, det, model.names))
        if save_txt:
            (out_dir / "labels" / f"{Path(f).stem}.txt").write_text(yolo_rows(det, img0.shape[:2], save_conf))
        results.append({"image": f, "detections": det, "saved": saved})
        LOGGER.info(f"{Path(f).name}: {len(det)} detections")
    return results


def run(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m core.detect",
                                 description="Draw a model's detections on images; optionally write YOLO labels.")
    ap.add_argument("--weights", type=t.existing_file, nargs="+", required=True, help="checkpoint(s) .pt or exported .onnx (several = ensemble)")
    ap.add_argument("--source", required=True, help="an image, a folder of images or a .txt list of images")
    ap.add_argument("--imgsz", type=t.positive_int, default=640, help="square inference size (an .onnx without --dynamic: its own)")
    ap.add_argument("--conf", type=t.unit_interval, default=0.25, help="confidence threshold")
    ap.add_argument("--iou", type=t.unit_interval, default=0.45, help="NMS IoU threshold")
    ap.add_argument("--max-det", type=t.positive_int, default=1000)
    ap.add_argument("--device", type=t.device, default="cpu")
    ap.add_argument("--augment", action="store_true", help="test-time augmentation")
    ap.add_argument("--save-txt", action="store_true", help="write labels/<stem>.txt in YOLO format")
    ap.add_argument("--save-conf", action="store_true", help="add the confidence column to --save-txt rows")
    ap.add_argument("--project", default="runs/detect")
    ap.add_argument("--name", default="exp")
    ap.add_argument("--exist-ok", action="store_true")
    args = ap.parse_args(argv)
    model = load_for_inference(args.weights, select_device(args.device), augment=args.augment)
    files = list_image_files(args.source)
    if not files:
        raise SystemExit(f"error: no images found in {args.source}")
    out_dir = next_run_dir(args.project, args.name, args.exist_ok)
    results = detect(model, files, input_size(model, args.imgsz), out_dir, args.conf, args.iou, args.max_det,
                     args.save_txt, args.save_conf)
    n = sum(len(r["detections"]) for r in results)
    print(f"{len(results)} images, {n} detections -> {out_dir}" + (f" (labels in {out_dir / 'labels'})" if args.save_txt else ""))
    return results


@main_guard("core.detect")
def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
