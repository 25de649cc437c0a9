"""Image augmentations that move boxes with the pixels.

Images are BGR uint8 (H, W, 3) numpy arrays. Boxes inside this module are (n, 5) float arrays
`[cls, x1, y1, x2, y2]` in pixels, continuous coordinates: pixel column i covers [i, i + 1).
Every function returns new arrays and never modifies its inputs (RAM-cached images are shared).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

PAD_COLOR = (114, 114, 114)


def xywhn_to_xyxy(labels: np.ndarray, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    """[cls, cx, cy, bw, bh] normalised -> [cls, x1, y1, x2, y2] pixels (scaled to w, h, shifted by pad)."""
    out = labels.astype(np.float64).copy().reshape(-1, 5)
    out[:, 1] = w * (labels[:, 1] - labels[:, 3] / 2) + padw
    out[:, 2] = h * (labels[:, 2] - labels[:, 4] / 2) + padh
    out[:, 3] = w * (labels[:, 1] + labels[:, 3] / 2) + padw
    out[:, 4] = h * (labels[:, 2] + labels[:, 4] / 2) + padh
    return out


def xyxy_to_xywhn(labels: np.ndarray, w: float, h: float) -> np.ndarray:
    """[cls, x1, y1, x2, y2] pixels -> [cls, cx, cy, bw, bh] normalised to an image of w x h (float32)."""
    out = np.zeros((len(labels), 5), dtype=np.float32)
    out[:, 0] = labels[:, 0]
    out[:, 1] = (labels[:, 1] + labels[:, 3]) / 2 / w
    out[:, 2] = (labels[:, 2] + labels[:, 4]) / 2 / h
    out[:, 3] = (labels[:, 3] - labels[:, 1]) / w
    out[:, 4] = (labels[:, 4] - labels[:, 2]) / h
    return out


def letterbox(
    img: np.ndarray, new_shape: int | tuple[int, int] = 640, color: tuple[int, int, int] = PAD_COLOR,
    auto: bool = False, scaleup: bool = True, stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize keeping the aspect ratio, then pad to `new_shape` (h, w).

    Returns (image, (ratio_w, ratio_h), (pad_left, pad_top)); a point x maps to x * ratio_w + pad_left.
    `auto` pads only to the next multiple of `stride`; `scaleup=False` never enlarges.
    """
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    h0, w0 = img.shape[:2]
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    if not scaleup:
        r = min(r, 1.0)
    w, h = round(w0 * r), round(h0 * r)
    dw, dh = new_shape[1] - w, new_shape[0] - h
    if auto:
        dw, dh = dw % stride, dh % stride
    if (w, h) != (w0, h0):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    left, top = dw // 2, dh // 2
    img = cv2.copyMakeBorder(img, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=color)
    return img, (w / w0, h / h0), (left, top)


def augment_hsv(img: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> np.ndarray:
    """Random hue/saturation/value gains in [1 - gain, 1 + gain] (hue wraps around)."""
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def perspective_matrix(
    in_shape: tuple[int, int], out_shape: tuple[int, int], angle: float = 0.0, scale: float = 1.0,
    shear: tuple[float, float] = (0.0, 0.0), translate: tuple[float, float] = (0.5, 0.5),
    perspective: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """3x3 matrix: centre the input, perspective, rotate `angle` degrees (counter-clockwise) and
    scale, shear (degrees, x and y), then place the centre at `translate` * (out_w, out_h)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_shape[1] / 2, -in_shape[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = perspective
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=scale)
    S = np.eye(3)
    S[0, 1], S[1, 0] = math.tan(math.radians(shear[0])), math.tan(math.radians(shear[1]))
    T = np.eye(3)
    T[0, 2], T[1, 2] = translate[0] * out_shape[1], translate[1] * out_shape[0]
    return T @ S @ R @ P @ C


def box_candidates(
    box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100, area_thr: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """Keep a transformed box (box2, xyxy (n, 4)) if wider and taller than wh_thr px, with at least
    area_thr of the area of its (scaled) original box1 and an aspect ratio below ar_thr."""
    w1, h1 = box1[:, 2] - box1[:, 0], box1[:, 3] - box1[:, 1]
    w2, h2 = box2[:, 2] - box2[:, 0], box2[:, 3] - box2[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def warp(
    img: np.ndarray, labels: np.ndarray, M: np.ndarray, out_shape: tuple[int, int], scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Warp the image by M into out_shape (h, w) and move the boxes with it.

    The 4 corners of each box are transformed; the new box is their bounding box, clipped to the
    image; boxes that became degenerate or lost most of their area are dropped (box_candidates).
    """
    h, w = out_shape
    if (img.shape[0], img.shape[1]) != (h, w) or not np.allclose(M, np.eye(3)):
        if M[2, 0] or M[2, 1]:
            img = cv2.warpPerspective(img, M, dsize=(w, h), borderValue=PAD_COLOR)
        else:
            img = cv2.warpAffine(img, M[:2], dsize=(w, h), borderValue=PAD_COLOR)
    if not len(labels):
        return img, labels.reshape(0, 5)
    new = transform_boxes(labels[:, 1:5], M)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, w)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, h)
    keep = box_candidates(labels[:, 1:5] * scale, new)
    out = np.concatenate((labels[keep, :1], new[keep]), 1)
    return img, out


def transform_boxes(xyxy: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Pixel boxes (n, 4) moved by the 3x3 image warp M: the bounding box of the 4 moved corners, unclipped."""
    n = len(xyxy)
    # cv2 maps pixel centres (index space); continuous coordinates are index + 0.5
    shift, unshift = np.eye(3), np.eye(3)
    shift[:2, 2], unshift[:2, 2] = 0.5, -0.5
    Mc = shift @ M @ unshift
    xy = np.ones((n * 4, 3))
    xy[:, :2] = xyxy[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    xy = xy @ Mc.T
    xy = xy[:, :2] / xy[:, 2:3]
    xy = xy.reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    return np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)


def random_perspective(
    img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, degrees: float = 0.0, translate: float = 0.0,
    scale: float = 0.0, shear: float = 0.0, perspective: float = 0.0, out_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One random warp (rotation, scale, shear, perspective, translation) of image and boxes.

    The input centre lands at the output centre +/- translate * size; out_shape defaults to the input's.
    """
    out_shape = out_shape or (img.shape[0], img.shape[1])
    M, s = random_perspective_matrix((img.shape[0], img.shape[1]), out_shape, rng, degrees, translate, scale,
                                     shear, perspective)
    return warp(img, labels, M, out_shape, scale=s)


def random_perspective_matrix(
    in_shape: tuple[int, int], out_shape: tuple[int, int], rng: np.random.Generator, degrees: float = 0.0,
    translate: float = 0.0, scale: float = 0.0, shear: float = 0.0, perspective: float = 0.0,
) -> tuple[np.ndarray, float]:
    """The random warp of random_perspective, drawn from rng: (3x3 matrix, its scale)."""
    s = rng.uniform(1 - scale, 1 + scale)
    M = perspective_matrix(
        in_shape, out_shape,
        angle=rng.uniform(-degrees, degrees), scale=s,
        shear=(rng.uniform(-shear, shear), rng.uniform(-shear, shear)),
        translate=(rng.uniform(0.5 - translate, 0.5 + translate), rng.uniform(0.5 - translate, 0.5 + translate)),
        perspective=(rng.uniform(-perspective, perspective), rng.uniform(-perspective, perspective)),
    )
    return M, s


def mosaic4(
    images: list[np.ndarray], labels: list[np.ndarray], s: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tile 4 images around a random centre of a 2s x 2s canvas (grey 114).

    `labels[k]` are normalised [cls, cx, cy, w, h] of images[k]. Returns the canvas and its
    pixel boxes [cls, x1, y1, x2, y2], clipped to the canvas (each tile is cut only at the canvas edge).
    """
    xc, yc = (int(rng.uniform(s / 2, 3 * s / 2)) for _ in range(2))
    canvas = np.full((2 * s, 2 * s, 3), PAD_COLOR[0], dtype=np.uint8)
    out = []
    for k, (img, lab) in enumerate(zip(images, labels)):
        h, w = img.shape[:2]
        (x1a, y1a, x2a, y2a), (x1b, y1b) = mosaic_tile(k, w, h, xc, yc, s)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y1b + (y2a - y1a), x1b:x1b + (x2a - x1a)]
        out.append(xywhn_to_xyxy(lab, w, h, x1a - x1b, y1a - y1b))
    boxes = np.concatenate(out, 0) if out else np.zeros((0, 5))
    boxes[:, 1:] = boxes[:, 1:].clip(0, 2 * s)
    return canvas, boxes


def mosaic_tile(k: int, w: int, h: int, xc: int, yc: int, s: int) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Where tile k (0 top left, 1 top right, 2 bottom left, 3 bottom right) of a w x h image goes on the
    2s x 2s canvas around the centre (xc, yc): its canvas window (x1, y1, x2, y2), and the top-left corner
    of the part of the image shown there (the part nearest the centre)."""
    if k == 0:  # the tile's bottom-right corner at the centre
        x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
    elif k == 1:
        x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
    elif k == 2:
        x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(yc + h, 2 * s)
    else:
        x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(yc + h, 2 * s)
    x1b = w - (x2a - x1a) if k in (0, 2) else 0
    y1b = h - (y2a - y1a) if k in (0, 1) else 0
    return (x1a, y1a, x2a, y2a), (x1b, y1b)


def mixup(
    img: np.ndarray, labels: np.ndarray, img2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) ratio (about 0.5); keep the boxes of both."""
    r = rng.beta(32.0, 32.0)
    blended = (img.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).round().astype(np.uint8)
    return blended, np.concatenate((labels, labels2), 0)


def _cover_fraction(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection of `box` (4,) with each of `boxes` (n, 4), over the area of each of `boxes`."""
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + 1e-9
    return iw * ih / area


def copy_paste(
    img: np.ndarray, labels: np.ndarray, p: float, rng: np.random.Generator, max_cover: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Copy-paste without segments: for a random fraction `p` of the boxes, the box's rectangle
    crop (object and its local background) is flipped left-right and pasted at the mirrored
    position (x -> w - x), with a new label of the same class, provided the pasted rectangle covers
    at most `max_cover` (IoA 0.3) of every box already in the image (originals and earlier pastes),
    so no existing object is hidden. Crops are taken from the unmodified input image.
    """
    n = len(labels)
    if not p or not n:
        return img, labels
    h, w = img.shape[:2]
    out, boxes = img.copy(), labels.copy()
    for j in rng.permutation(n)[: round(p * n)]:
        c, x1, y1, x2, y2 = labels[j]
        xi1, yi1 = int(math.floor(x1)), int(math.floor(y1))
        xi2, yi2 = int(math.ceil(x2)), int(math.ceil(y2))
        new = np.array([w - xi2, yi1, w - xi1, yi2], dtype=np.float64)
        if xi2 <= xi1 or yi2 <= yi1 or (_cover_fraction(new, boxes[:, 1:5]) > max_cover).any():
            continue
        out[yi1:yi2, w - xi2:w - xi1] = img[yi1:yi2, xi1:xi2][:, ::-1]
        nb = np.array([[c, w - x2, y1, w - x1, y2]])
        boxes = np.concatenate((boxes, nb), 0)
    return out, boxes
