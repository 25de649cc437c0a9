"""Anchor fitting (k-means + genetic refinement), AutoAnchor, and replacing a built model's anchors.

The fit metric is YOLOv5's: a box matches an anchor when both w and h ratios lie within
[1/thr, thr]; fitness is the mean best-ratio of the matched boxes, so it rewards both recall
(best possible recall, BPR) and tight anchors. Box sizes are in pixels at the training size, each
image scaled so its long side is imgsz (as the loader letterboxes it): a box keeps its image's
aspect ratio.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from .head import Detect

__all__ = ["label_wh", "anchor_metrics", "kmean_anchors", "model_anchor_pixels", "set_anchors", "fit_anchor_count",
           "check_anchors"]

MIN_BOX_PX = 2.0  # boxes smaller than this carry no shape information (YOLOv5 drops them too)
MAX_BOXES = 20000  # the fit subsamples larger sets; anchors need shape statistics, not every box
MIN_BPR = 0.98  # AutoAnchor refits below this best possible recall (YOLOv5's threshold)
LOGGER = logging.getLogger(__name__)


def label_wh(labels: Sequence[np.ndarray], shapes_hw: np.ndarray, imgsz: int,
             gain: np.ndarray | None = None) -> np.ndarray:
    """Box sizes (n, 2) in pixels at training size: per image, normalised w, h times (w0, h0) * imgsz /
    max(h0, w0), i.e. YOLOv5's `shapes * imgsz / shapes.max(1)`. labels: per image (n, 5) [cls, cx, cy, w, h];
    shapes_hw: (N, 2) original (h, w); gain: optional per-image scale (N,) (AutoAnchor's 0.9-1.1 jitter)."""
    shapes_hw = np.asarray(shapes_hw, dtype=np.float64).reshape(-1, 2)
    if len(shapes_hw) != len(labels):
        raise ValueError(f'label_wh: {len(labels)} label arrays but {len(shapes_hw)} image shapes')
    size = shapes_hw[:, ::-1] * (imgsz / shapes_hw.max(1, keepdims=True))  # (w, h) with the long side = imgsz
    if gain is not None:
        size = size * np.asarray(gain, dtype=np.float64).reshape(-1, 1)
    out = [np.asarray(lb, dtype=np.float64)[:, 3:5] * s for lb, s in zip(labels, size) if len(lb)]
    return np.concatenate(out, 0) if out else np.zeros((0, 2))


def _best_ratio(k: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """(n_boxes, n_anchors) match score min(r, 1/r) over w and h, in (0, 1]."""
    r = wh[:, None, :] / k[None, :, :]
    return np.minimum(r, 1.0 / r).min(2)


def anchor_metrics(anchors: np.ndarray, wh: np.ndarray, thr: float = 4.0) -> dict[str, float]:
    """``{'bpr', 'aat'}``: share of boxes some anchor can match, mean anchors matched per box."""
    x = _best_ratio(np.asarray(anchors, dtype=np.float64).reshape(-1, 2), np.asarray(wh, dtype=np.float64))
    return {'bpr': float((x.max(1) > 1 / thr).mean()), 'aat': float((x > 1 / thr).sum(1).mean())}


def _fitness(k: np.ndarray, wh: np.ndarray, thr: float) -> float:
    best = _best_ratio(k, wh).max(1)
    return float((best * (best > 1 / thr)).mean())


def _kmeans(x: np.ndarray, n: int, rng: np.random.Generator, iters: int = 30) -> np.ndarray:
    """Plain Lloyd k-means with k-means++ seeding."""
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, n):
        d2 = np.min(((x[:, None] - np.array(centers)[None]) ** 2).sum(-1), 1)
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centers.append(x[rng.choice(len(x), p=p)])
    c = np.array(centers)
    for _ in range(iters):
        assign = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        new = np.array([x[assign == j].mean(0) if (assign == j).any() else x[rng.integers(len(x))]
                        for j in range(n)])
        if np.allclose(new, c):
            break
        c = new
    return c


def kmean_anchors(wh: np.ndarray, n: int = 9, imgsz: int = 640, thr: float = 4.0, gen: int = 300,
                  seed: int = 0) -> np.ndarray:
    """Fit n anchors (n, 2) in pixels, sorted by area, to box sizes ``wh`` (n_boxes, 2).

    ``wh`` is in pixels at the training image size ``imgsz`` (sizes are clipped to it); boxes
    under 2 px are ignored. Pass imgsz/thr by keyword.
    """
    if imgsz < 32:
        raise ValueError(f'kmean_anchors: imgsz={imgsz} is not an image size; pass thr=... by keyword')
    if thr <= 1:
        raise ValueError(f'kmean_anchors: thr={thr} must be > 1 (a w/h ratio limit, YOLOv5 uses 4.0)')
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = np.minimum(wh, imgsz)
    wh = wh[(wh >= MIN_BOX_PX).all(1)]
    if len(wh) < n:
        raise ValueError(f'kmean_anchors: {len(wh)} boxes of at least {MIN_BOX_PX} px, need >= n={n}')
    rng = np.random.default_rng(seed)
    if len(wh) > MAX_BOXES:
        wh = wh[rng.choice(len(wh), MAX_BOXES, replace=False)]

    s = wh.std(0)
    s[s == 0] = 1.0
    k = _kmeans(wh / s, n, rng) * s
    k = np.clip(k, MIN_BOX_PX, None)
    f = _fitness(k, wh, thr)

    # genetic refinement: multiplicative mutations of the anchor sizes, keep improvements
    mutate_p, sigma = 0.9, 0.1
    for _ in range(gen):
        v = np.ones_like(k)
        while (v == 1).all():  # redraw until some gene moves
            v = ((rng.random(k.shape) < mutate_p) * rng.random() * rng.standard_normal(k.shape) * sigma
                 + 1).clip(0.3, 3.0)
        kg = np.clip(k * v, MIN_BOX_PX, None)
        fg = _fitness(kg, wh, thr)
        if fg > f:
            k, f = kg, fg
    return k[np.argsort(k.prod(1))]


def model_anchor_pixels(model) -> np.ndarray:
    """The model's anchors in pixels, (nl * na, 2), level by level."""
    return model.model[-1].anchor_pixels().detach().cpu().reshape(-1, 2).numpy()


def set_anchors(model, anchors_pixels: np.ndarray) -> None:
    """Give ``model`` new anchors (nl * na, 2) in pixels, assigned to levels in order
    (sort by area first so the smallest go to the finest stride).

    ``model.arch['anchors']`` becomes the explicit per-level list, so checkpoints rebuild. If the
    count per level (na) changes, Detect is re-created: its output convs get a fresh init and
    prior biases (their shapes depend on na), the rest of the model keeps its weights.
    """
    old: Detect = model.model[-1]
    a = np.asarray(anchors_pixels, dtype=np.float64).reshape(-1, 2)
    if len(a) == 0 or len(a) % old.nl or (a <= 0).any():
        raise ValueError(f'set_anchors: need nl*na positive (w, h) rows with nl={old.nl}; got shape {a.shape}')
    na = len(a) // old.nl
    per_level = [[round(float(v), 2) for v in a[i * na:(i + 1) * na].ravel()] for i in range(old.nl)]
    pixels = torch.tensor(per_level, dtype=torch.float32).view(old.nl, na, 2)
    if na == old.na:
        old.set_pixel_anchors(pixels)
    else:
        new = Detect(old.nc, per_level, [c.in_channels for c in old.m])
        for attr in ('i', 'f', 'type', 'n'):
            setattr(new, attr, getattr(old, attr))
        new.args = [old.nc, na, [c.in_channels for c in old.m]]
        ref = old.m[0].weight
        new = new.to(device=ref.device, dtype=ref.dtype)
        new.set_stride(old.stride)
        new.np = sum(p.numel() for p in new.parameters())
        model.model[-1] = new
        model.initialize_biases()
    model.arch['anchors'] = per_level


def fit_anchor_count(model, na: int, labels: Sequence[np.ndarray], shapes_hw: np.ndarray, imgsz: int,
                     thr: float = 4.0, seed: int = 0) -> None:
    """Give `model` `na` anchors per level fitted by k-means (hyp `anchors` differing from the model's count)."""
    det = model.model[-1]
    if na == det.na:
        return
    wh = label_wh(labels, shapes_hw, imgsz)
    if len(wh) < det.nl * na:
        LOGGER.warning(f'hyp anchors={na}: too few labels to fit anchors, keeping {det.na}')
        return
    set_anchors(model, kmean_anchors(wh, det.nl * na, imgsz=imgsz, thr=thr, seed=seed))

def check_anchors(model, labels: Sequence[np.ndarray], shapes_hw: np.ndarray, imgsz: int, thr: float = 4.0,
                  seed: int = 0, refit: bool = True, gen: int = 1000) -> dict:
    """AutoAnchor (YOLOv5's check_anchors): the best possible recall of the model's anchors on the labels
    (each image jittered in scale by 0.9-1.1, seeded); below MIN_BPR and with `refit`, anchors from
    k-means + `gen` generations of evolution replace them if their BPR is higher. Logged; returns
    ``{'bpr', 'aat', 'new_bpr' (None when no refit was tried), 'replaced'}``.
    """
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.9, 1.1, size=len(labels))
    wh = label_wh(labels, shapes_hw, imgsz, gain)
    if len(wh) == 0:
        LOGGER.warning('AutoAnchor: no labelled boxes: anchors not checked')
        return {'bpr': float('nan'), 'aat': float('nan'), 'new_bpr': None, 'replaced': False}
    report = {**anchor_metrics(model_anchor_pixels(model), wh, thr), 'new_bpr': None, 'replaced': False}
    head = f"AutoAnchor: {report['aat']:.2f} anchors/target, best possible recall {report['bpr']:.4f}"
    if report['bpr'] >= MIN_BPR:
        LOGGER.info(f'{head}: current anchors are a good fit')
        return report
    if not refit:
        LOGGER.warning(f'{head} (< {MIN_BPR}): kept, as the weights were trained with these anchors')
        return report
    n = len(model_anchor_pixels(model))
    try:
        new = kmean_anchors(label_wh(labels, shapes_hw, imgsz), n, imgsz=imgsz, thr=thr, gen=gen, seed=seed)
    except ValueError as e:  # too few boxes to fit n anchors
        LOGGER.warning(f'{head} (< {MIN_BPR}): no refit ({e})')
        return report
    report['new_bpr'] = anchor_metrics(new, wh, thr)['bpr']
    if report['new_bpr'] > report['bpr']:
        set_anchors(model, new)
        report['replaced'] = True
        LOGGER.info(f"{head} (< {MIN_BPR}): anchors refit by k-means + evolution, best possible recall "
                 f"{report['new_bpr']:.4f}: {np.round(new).astype(int).tolist()}")
    else:
        LOGGER.info(f"{head} (< {MIN_BPR}): refit reached {report['new_bpr']:.4f}, no better: original anchors kept")
    return report
