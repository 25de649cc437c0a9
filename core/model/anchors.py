"""Anchor fitting (k-means + genetic refinement) and replacing a built model's anchors.

The fit metric is YOLOv5's: a box matches an anchor when both w and h ratios lie within
[1/thr, thr]; fitness is the mean best-ratio of the matched boxes, so it rewards both recall
(best possible recall, BPR) and tight anchors.
"""
from __future__ import annotations

import numpy as np
import torch

from .detect import Detect

MIN_BOX_PX = 2.0  # boxes smaller than this carry no shape information (YOLOv5 drops them too)
MAX_BOXES = 20000  # the fit subsamples larger sets; anchors need shape statistics, not every box


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
