"""Pictures of a training run, drawn from what the engine already has (no second validation pass).

In the run folder (`RunPlots`, rank 0, `TrainOptions.plots`):
- labels.png             before training, from the training labels: objects per class, box centres, box sizes
- train_batch0..2.jpg    the first three batches of the first epoch trained, as augmented, with their labels
- results.png            redrawn from results.csv after every epoch (unless its drawing has cost more than 2% of
                         the training time so far: then at the end): losses, P, R, mAP50, mAP50-95
- PR_curve.png, F1_curve.png, P_curve.png, R_curve.png, confusion_matrix.png, val_batch0..2_labels.jpg and
  val_batch0..2_pred.jpg  from the last validation (`ValPlots`, the collector core.val.validate fills)

The curves are core.metrics.ap_per_class's own: the PR curve is the precision each class's AP50 integrates
(its area is AP50 within 0.011), the F1/P/R curves are those the reported P and R are read from, at the
confidence marked on them. matplotlib draws on figures of its own (no pyplot state); OpenCV draws the batches.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

from core.boxes import xywh2xyxy
from core.confusion import ConfusionMatrix
from core.metrics import _smooth
from core.run_dir import read_history

__all__ = ["RunPlots", "ValPlots", "plot_results", "plot_labels", "plot_images", "plot_curves",
           "plot_confusion_matrix"]

LOGGER = logging.getLogger(__name__)

BATCHES = 3          # train_batch0..2, val_batch0..2
MAX_IMAGES = 16      # images per batch picture
RESULTS_SHARE = 0.02  # results.png redraws may cost at most this share of the training time (always drawn at the end)
CONF_SHOWN = 0.25    # predictions drawn on val_batch*_pred.jpg (and counted in the confusion matrix)
PALETTE = ("FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
           "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7")
RESULT_PANELS = (("train_box", "train_obj", "train_cls", "P", "R"),
                 ("val_box", "val_obj", "val_cls", "mAP50", "mAP50-95"))


def color(c: int, bgr: bool = False) -> tuple[int, int, int]:
    h = PALETTE[int(c) % len(PALETTE)]
    rgb = tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))
    return rgb[::-1] if bgr else rgb


def _figure(w: float, h: float, rows: int = 1, cols: int = 1, tight: bool = True):
    """(figure, axes array) on matplotlib's file-only Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: imported when the first picture is drawn
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), tight_layout=tight)
    FigureCanvasAgg(fig)
    return fig, np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(rows, cols)


def _name(names: Sequence[str] | Mapping | None, c: int) -> str:
    if isinstance(names, Mapping):
        return str(names.get(c, c))
    return str(names[c]) if names is not None and 0 <= c < len(names) else str(c)


# ---- results.png ------------------------------------------------------------------------------------------

def plot_results(csv: Path | str, out: Path | str | None = None) -> Path:
    """results.png beside results.csv: one panel per loss and metric over the epochs."""
    csv = Path(csv)
    out = Path(out) if out else csv.with_name("results.png")
    rows = read_history(csv)
    fig, axes = _figure(15, 6, 2, 5, tight=False)  # fixed margins: tight_layout costs a fifth of the drawing
    fig.subplots_adjust(left=0.05, right=0.985, bottom=0.08, top=0.94, wspace=0.32, hspace=0.3)
    epochs = [r["epoch"] for r in rows]
    for ax, key in zip(axes.ravel(), [k for row in RESULT_PANELS for k in row]):
        y = np.array([r.get(key, np.nan) for r in rows], float)
        ax.plot(epochs, y, marker=".", markersize=6, linewidth=1.5, label="results")
        if len(y) >= 5 and np.isfinite(y).all():
            ax.plot(epochs, _trend(y), ":", color="tab:orange", linewidth=1.5, label="smooth")
        ax.set_title(key, fontsize=11)
        ax.grid(alpha=0.3)
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    axes[1, 0].set_xlabel("epoch")
    fig.savefig(out, dpi=100)
    return out


def _trend(y: np.ndarray) -> np.ndarray:
    """A centred moving average over an odd window of about a fifth of the points (edges padded), same length."""
    k = max(3, round(len(y) * 0.2) // 2 * 2 + 1)
    padded = np.concatenate((np.full(k // 2, y[0]), y, np.full(k // 2, y[-1])))
    return np.convolve(padded, np.ones(k) / k, mode="valid")


# ---- labels.png -------------------------------------------------------------------------------------------

def plot_labels(labels: Sequence[np.ndarray], names: Sequence[str], out: Path | str) -> Path:
    """labels.png: objects per class, box centres and box sizes (normalised), and the boxes themselves."""
    lab = np.concatenate([np.asarray(x, float).reshape(-1, 5) for x in labels] or [np.zeros((0, 5))])
    nc = max(len(names), int(lab[:, 0].max()) + 1 if len(lab) else 0)
    counts = np.bincount(lab[:, 0].astype(int), minlength=nc)
    fig, axes = _figure(10, 10, 2, 2)
    ax = axes[0, 0]
    ax.bar(range(nc), counts, color=[np.array(color(c)) / 255 for c in range(nc)])
    ax.set_ylabel("instances")
    ax.set_title(f"{len(lab)} objects in {len(labels)} images, {nc} classes")
    if nc <= 30:
        ax.set_xticks(range(nc), [_name(names, c) for c in range(nc)], rotation=90 if nc > 8 else 0)
    ax = axes[0, 1]  # the boxes, centred, as they are shaped (up to 1000)
    ax.set_title("box shapes (1000 at most, centred)")
    ax.add_collection(_centred_boxes(lab[:1000]))
    ax.set(xlim=(0, 1), ylim=(1, 0), aspect="equal")
    for ax, (i, j), title, (xl, yl) in ((axes[1, 0], (1, 2), "box centres", ("x", "y")),
                                        (axes[1, 1], (3, 4), "box sizes", ("width", "height"))):
        if len(lab):
            ax.hist2d(lab[:, i], lab[:, j], bins=50, range=((0, 1), (0, 1)), cmap="Blues", cmin=1)
        ax.set(title=title, xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(1, 0) if title == "box centres" else (0, 1),
               aspect="equal")
    fig.savefig(out, dpi=100)
    return Path(out)


def _centred_boxes(lab: np.ndarray):
    """Box outlines centred at (0.5, 0.5), coloured by class: one collection draws in a fraction of the time of
    one patch per box."""
    from matplotlib.collections import PolyCollection
    half = lab[:, 3:5] / 2
    x0, y0, x1, y1 = 0.5 - half[:, 0], 0.5 - half[:, 1], 0.5 + half[:, 0], 0.5 + half[:, 1]
    corners = np.stack([np.stack(p, 1) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], 1)
    colours = [np.array(color(c)) / 255 for c in lab[:, 0].astype(int)]
    return PolyCollection(corners, closed=True, facecolors="none", edgecolors=colours, alpha=0.25, linewidths=0.8)


# ---- batch pictures (OpenCV) ------------------------------------------------------------------------------

def target_boxes(targets: torch.Tensor | np.ndarray, n: int, h: int, w: int) -> list[np.ndarray]:
    """Loader targets (N, 6) [image, cls, cx, cy, w, h] normalised -> per image (m, 5) [cls, x1, y1, x2, y2] pixels."""
    t = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    out = []
    for i in range(n):
        r = t[t[:, 0] == i]
        out.append(np.concatenate((r[:, 1:2], xywh2xyxy(r[:, 2:6]) * [w, h, w, h]), 1) if len(r) else np.zeros((0, 5)))
    return out


def prediction_boxes(preds: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """NMS output (n, 6) [x1, y1, x2, y2, conf, cls] per image -> (n, 6) [cls, x1, y1, x2, y2, conf]."""
    return [p.detach().cpu().float().numpy()[:, [5, 0, 1, 2, 3, 4]] for p in preds]


def plot_images(imgs: torch.Tensor | np.ndarray, boxes: Sequence[np.ndarray], paths: Sequence[str],
                names: Sequence[str], out: Path | str, conf_thres: float = CONF_SHOWN, note: str = "") -> Path:
    """A mosaic of up to 16 images (uint8 (B, 3, H, W) RGB) with their boxes per image, (m, 5) [cls, x1, y1,
    x2, y2] labels or (m, 6) predictions with a confidence (those below conf_thres are not drawn); each tile
    is named by its file (and `note`) and drawn at 256 px at least, so labels stay readable on small images."""
    imgs = imgs.detach().cpu().numpy() if isinstance(imgs, torch.Tensor) else np.asarray(imgs)
    bs = min(len(imgs), MAX_IMAGES)
    h, w = imgs.shape[2:]
    ns = math.ceil(math.sqrt(bs)) if bs else 1
    scale = min(max(256 / max(h, w), 1.0), 1920 / ns / max(h, w)) if max(h, w) else 1.0
    th, tw = int(h * scale), int(w * scale)
    mosaic = np.full((ns * th, ns * tw, 3), 255, np.uint8)
    fs = max(th, tw) / 640 + 0.25  # font scale
    lw = max(1, round(max(th, tw) / 300))
    for i in range(bs):
        y0, x0 = (i // ns) * th, (i % ns) * tw
        tile = cv2.resize(np.ascontiguousarray(imgs[i].transpose(1, 2, 0)[..., ::-1]), (tw, th),
                          interpolation=cv2.INTER_LINEAR)
        for b in boxes[i] if i < len(boxes) else ():
            conf = b[5] if len(b) > 5 else None
            if conf is not None and conf < conf_thres:
                continue
            c = int(b[0])
            x1, y1, x2, y2 = (np.asarray(b[1:5]) * scale).round().astype(int)
            cv2.rectangle(tile, (x1, y1), (x2, y2), color(c, bgr=True), lw, cv2.LINE_AA)
            text = _name(names, c) + (f" {conf:.2f}" if conf is not None else "")
            _label(tile, text, x1, y1, color(c, bgr=True), fs * 0.8)
        caption = Path(str(paths[i])).name[:40] + (f"  {note}" if note else "")
        (cw, ch), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, fs * 0.6, 1)
        cv2.rectangle(tile, (0, 0), (cw + 6, ch + base + 4), (40, 40, 40), -1)  # dark strip: any background
        cv2.putText(tile, caption, (3, ch + 2), cv2.FONT_HERSHEY_SIMPLEX, fs * 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.rectangle(tile, (0, 0), (tw - 1, th - 1), (255, 255, 255), 2)
        mosaic[y0:y0 + th, x0:x0 + tw] = tile
    rows = math.ceil(bs / ns) if bs else 1
    cv2.imwrite(str(out), mosaic[: rows * th], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return Path(out)


def _label(img: np.ndarray, text: str, x: int, y: int, bgr: tuple, fs: float) -> None:
    """A filled label above a box's top-left corner (inside the image when the box touches its top)."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs * 0.5, 1)
    y = max(y, th + base + 1)
    cv2.rectangle(img, (x, y - th - base - 1), (x + tw + 2, y), bgr, -1, cv2.LINE_AA)
    cv2.putText(img, text, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, fs * 0.5, (255, 255, 255), 1, cv2.LINE_AA)


# ---- curves and confusion matrix --------------------------------------------------------------------------

def plot_curves(res: Mapping[str, Any], names: Sequence[str], save_dir: Path | str) -> dict[str, Path]:
    """PR_curve.png, F1_curve.png, P_curve.png and R_curve.png from core.metrics.ap_per_class's result."""
    save_dir = Path(save_dir)
    px, classes = res["px"], [_name(names, int(c)) for c in res["classes"]]
    out = {"PR_curve": save_dir / "PR_curve.png"}
    ap50 = res["ap"][:, 0] if len(res["classes"]) else np.zeros(0)
    _draw(px, res["pr_curve"], classes, ap50, "recall", "precision", out["PR_curve"],
          f"all classes: mAP50 {ap50.mean() if len(ap50) else 0:.3f} (area {pr_area(res):.3f})")
    for key, label, stem in (("f1", "F1", "F1_curve"), ("p", "precision", "P_curve"), ("r", "recall", "R_curve")):
        out[stem] = path = save_dir / f"{stem}.png"
        _draw(px, res[f"{key}_curve"], classes, res[key], "confidence", label, path,
              f"all classes: {label} {res[key].mean() if len(res[key]) else 0:.3f} at confidence {res['conf']:.3f}",
              mark=res["conf"], smooth=key == "f1")
    return out


def pr_area(res: Mapping[str, Any]) -> float:
    """Area under the PR curve PR_curve.png draws for all classes: AP50 to within 0.011 (core.metrics)."""
    if not len(res["classes"]):
        return 0.0
    y, x = res["pr_curve"].mean(0), res["px"]
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def _draw(px, curves, classes, values, xlabel, ylabel, out, mean_label, mark=None, smooth=False) -> None:
    fig, ax = _figure(9, 6)
    ax = ax[0, 0]
    few = len(classes) <= 20
    for c, (name, y, v) in enumerate(zip(classes, curves, values)):
        ax.plot(px, y, linewidth=1, color=np.array(color(c)) / 255 if few else "grey", alpha=0.8 if few else 0.3,
                label=f"{name} {v:.3f}" if few else None)
    if len(classes):
        mean = curves.mean(0)
        ax.plot(px, _smooth(mean, 0.1) if smooth else mean, linewidth=3, color="blue", label=mean_label)
    if mark is not None:
        ax.axvline(mark, color="black", linestyle="--", linewidth=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=9)
    ax.set_title(f"{ylabel}-{xlabel} curve" if xlabel == "confidence" else "precision-recall curve (IoU 0.5)")
    fig.savefig(out, dpi=100)


def plot_confusion_matrix(cm: ConfusionMatrix, names: Sequence[str], out: Path | str) -> Path:
    """confusion_matrix.png: counts and column-normalised (where each true class went), background last."""
    n = cm.nc + 1
    labels = [_name(names, c) for c in range(cm.nc)] + ["background"]
    side = max(5.0, 0.45 * n + 2.5)
    fig, axes = _figure(2 * side + 1, side, 1, 2)
    for ax, data, title, fmt in ((axes[0, 0], cm.matrix, "counts", "d"),
                                 (axes[0, 1], cm.normalized(), "normalised by true class", ".2f")):
        im = ax.imshow(data, cmap="Blues", vmin=0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if n <= 30:
            ax.set_xticks(range(n), labels, rotation=90)
            ax.set_yticks(range(n), labels)
            peak = data.max() or 1
            for (i, j), v in np.ndenumerate(data):
                if v:
                    ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8,
                            color="white" if v > 0.5 * peak else "black")
        ax.set(xlabel="true", ylabel="predicted",
               title=f"confusion matrix, {title} (conf > {cm.conf:g}, IoU > {cm.iou_thres:g})")
    fig.savefig(out, dpi=100)
    return Path(out)


# ---- the collector and the run ----------------------------------------------------------------------------

class ValPlots:
    """What one validation's pictures need (core.val.validate's `collector`): the confusion matrix, the first
    batches with their labels and predictions, and the ap_per_class result with its curves."""

    def __init__(self, nc: int):
        self.confusion = ConfusionMatrix(nc, conf=CONF_SHOWN)
        self.batches: list[tuple] = []
        self.result: Mapping[str, Any] | None = None

    def batch(self, index: int, imgs: torch.Tensor, targets: torch.Tensor, paths: Sequence[str],
              preds: Sequence[torch.Tensor]) -> None:
        if index < BATCHES:
            n = min(len(imgs), MAX_IMAGES)
            h, w = imgs.shape[2:]
            self.batches.append((imgs[:n].cpu().clone(), target_boxes(targets, n, h, w), list(paths[:n]),
                                 prediction_boxes(preds[:n])))

    def image(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        self.confusion.update(preds, labels)

    def finish(self, ap_result: Mapping[str, Any]) -> None:
        self.result = ap_result


class RunPlots:
    """A run folder's pictures: `labels` before training, `train_batch` in the first epoch, `validation` (a
    collector per validation), `results` after each epoch, `final` at the end. A picture that fails to draw
    is logged and skipped: it never stops a training."""

    def __init__(self, save_dir: Path | str, names: Sequence[str]):
        self.save_dir, self.names = Path(save_dir), list(names)
        self.last: ValPlots | None = None
        self.written: dict[str, Path] = {}  # picture name -> file, for trackers (core.trackers)
        self.seconds: dict[str, float] = {}  # picture -> seconds spent drawing it (all epochs): their cost
        self.train_s, self.draws, self.results_due = 0.0, 0, None  # results.png's budget (see `results`)

    def _safe(self, what: str, draw, *args) -> Any:
        t0 = time.perf_counter()
        try:
            return draw(*args)
        except Exception as e:  # noqa: BLE001 - a picture is never worth a training
            LOGGER.warning(f"plots: {what} not drawn: {type(e).__name__}: {e}")
            return None
        finally:
            self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - t0

    def labels(self, labels: Sequence[np.ndarray]) -> None:
        if path := self._safe("labels.png", plot_labels, labels, self.names, self.save_dir / "labels.png"):
            self.written["labels"] = path

    def train_batch(self, i: int, imgs: torch.Tensor, targets: torch.Tensor, paths: Sequence[str]) -> None:
        if i < BATCHES:
            n = min(len(imgs), MAX_IMAGES)
            h, w = imgs.shape[2:]
            out = self.save_dir / f"train_batch{i}.jpg"
            if self._safe(out.name, plot_images, imgs[:n], target_boxes(targets, n, h, w), paths, self.names, out):
                self.written[out.stem] = out

    def validation(self) -> ValPlots:
        self.last = ValPlots(len(self.names))
        return self.last

    def results(self, csv: Path, epoch_seconds: float = math.inf) -> None:
        """Redraw results.png after an epoch, unless drawing it has cost more than RESULTS_SHARE of the training
        time so far (a slow machine, short epochs): then it waits, and `final` draws it."""
        self.train_s += epoch_seconds
        spent = self.seconds.get("results.png", 0.0)
        if spent and spent * (1 + 1 / self.draws) > RESULTS_SHARE * self.train_s:  # the next one would pass it
            self.results_due = csv
            return
        self.draws += 1
        self.results_due = None
        if path := self._safe("results.png", plot_results, csv):
            self.written["results"] = path

    def final(self) -> None:
        """The last validation's curves, confusion matrix and batches."""
        if self.results_due is not None:
            self.draws, self.train_s = self.draws + 1, math.inf
            self.results(self.results_due)
        v = self.last
        if v is None:
            return
        if v.result is not None:
            self.written.update(self._safe("curves", plot_curves, v.result, self.names, self.save_dir) or {})
        out = self.save_dir / "confusion_matrix.png"
        if self._safe(out.name, plot_confusion_matrix, v.confusion, self.names, out):
            self.written[out.stem] = out
        # predictions above 0.25 (YOLOv5's), or above the max-F1 confidence where the reported P and R are read
        # when that is lower: a young model may have nothing above 0.25
        conf = min(CONF_SHOWN, float(v.result["conf"])) if v.result is not None else CONF_SHOWN
        for i, (imgs, labels, paths, preds) in enumerate(v.batches):
            for kind, boxes, note in (("labels", labels, ""), ("pred", preds, f"conf > {conf:.2f}")):
                out = self.save_dir / f"val_batch{i}_{kind}.jpg"
                if self._safe(out.name, plot_images, imgs, boxes, paths, self.names, out, conf, note):
                    self.written[out.stem] = out
        LOGGER.info(f"plots: {len(self.written)} pictures in {self.save_dir}, {sum(self.seconds.values()):.1f} s "
                    f"spent drawing ({', '.join(f'{k} {v:.2f}' for k, v in self.seconds.items())})")
