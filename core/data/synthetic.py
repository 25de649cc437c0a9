"""Built-in synthetic detection dataset ("shapes"), deterministic for a seed, in YOLO format.

Each image: a textured background (two-colour gradient, low-frequency colour blobs, random lines,
soft ellipses, pixel noise), 0-3 distractors that belong to no class (arcs, zigzags, letters,
long thin ellipses), then 1-8 class shapes of random colour, size min_size (default 16) to 120 px
(log-uniform) and
rotation, drawn one after another so later shapes occlude earlier ones, then 0-2 more distractors
on top. A shape whose visible area falls below 40% of its own area gets NO label (it stays in the
image, like an unlabelled, mostly hidden object); the others are labelled with the tight box of
their visible pixels. Every image uses its own RNG seeded by (seed, split, index).

Layout: <root>/images/{train,val}/000000.jpg and <root>/labels/{train,val}/000000.txt.
Generation writes to a temporary folder beside <root> and renames it, so an interrupted run never
leaves a half dataset.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

LOGGER = logging.getLogger(__name__)
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
MIN_VISIBLE = 0.4
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _random_color(rng: np.random.Generator) -> tuple[float, float, float]:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(40, 255), rng.uniform(50, 255)]]], dtype=np.float32)
    return tuple(float(c) for c in cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0])


def _polygon(n: int, radius: float, angle: float, cx: float, cy: float, inner: float | None = None) -> np.ndarray:
    """Regular polygon (or star with `inner` radius) as fixed-point int points (shift 4)."""
    k = 2 * n if inner else n
    a = angle + np.arange(k) * 2 * math.pi / k
    r = np.where(np.arange(k) % 2 == 1, inner, radius) if inner else np.full(k, radius)
    pts = np.stack((cx + r * np.cos(a), cy + r * np.sin(a)), 1)
    return np.round(pts * 16).astype(np.int32)


def _cross(size: float, angle: float, cx: float, cy: float) -> np.ndarray:
    a, b = size / 2, size * 0.16  # arm half-length, half-width
    pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a),
                    (-b, b), (-a, b), (-a, -b), (-b, -b)])
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + (cx, cy)
    return np.round(pts * 16).astype(np.int32)


def shape_mask(name: str, size: float, angle: float, cx: float, cy: float, hw: tuple[int, int]) -> np.ndarray:
    """Anti-aliased uint8 mask (0-255) of one class shape whose circumscribed diameter is `size`."""
    m = np.zeros(hw, np.uint8)
    r, aa = size / 2, cv2.LINE_AA
    if name in ("circle", "ring"):
        cv2.circle(m, (round(cx * 16), round(cy * 16)), round(r * 16), 255, -1, aa, shift=4)
        if name == "ring":
            cv2.circle(m, (round(cx * 16), round(cy * 16)), round(r * 0.55 * 16), 0, -1, aa, shift=4)
    elif name == "square":
        cv2.fillPoly(m, [_polygon(4, r, angle, cx, cy)], 255, aa, shift=4)
    elif name == "triangle":
        cv2.fillPoly(m, [_polygon(3, r, angle, cx, cy)], 255, aa, shift=4)
    elif name == "star":
        cv2.fillPoly(m, [_polygon(5, r, angle, cx, cy, inner=r * 0.45)], 255, aa, shift=4)
    elif name == "cross":
        cv2.fillPoly(m, [_cross(size, angle, cx, cy)], 255, aa, shift=4)
    else:
        raise ValueError(f"unknown synthetic shape {name!r}; known: {', '.join(SHAPES)}")
    return m


def _distractor_mask(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """A shape of no class: an open arc, a zigzag, a letter or a long thin ellipse."""
    h, w = hw
    m = np.zeros(hw, np.uint8)
    cx, cy, size = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 90)
    kind = rng.integers(4)
    if kind == 0:
        start = rng.uniform(0, 360)
        cv2.ellipse(m, (int(cx), int(cy)), (int(size / 2), int(size / 2)), 0, start,
                    start + rng.uniform(60, 240), 255, int(rng.integers(2, 6)), cv2.LINE_AA)
    elif kind == 1:
        pts = np.stack((cx + np.cumsum(rng.uniform(-size / 2, size / 2, 5)),
                        cy + np.cumsum(rng.uniform(-size / 2, size / 2, 5))), 1)
        cv2.polylines(m, [pts.astype(np.int32)], False, 255, int(rng.integers(2, 5)), cv2.LINE_AA)
    elif kind == 2:
        letter = "AEFHKLMNPRVWYZ"[rng.integers(14)]
        cv2.putText(m, letter, (int(cx), int(cy)), cv2.FONT_HERSHEY_SIMPLEX, size / 30, 255,
                    int(rng.integers(2, 5)), cv2.LINE_AA)
    else:
        axes = (int(size / 2), max(2, int(size / rng.uniform(5, 9))))
        cv2.ellipse(m, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA)
    return m


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    img = _gradient(_random_color(rng), _random_color(rng), rng.uniform(0, 2 * math.pi), float(w + h), xs, ys)
    g = int(rng.integers(3, 9))  # low-frequency colour blobs
    img += cv2.resize((rng.standard_normal((g, g, 3), dtype=np.float32) * rng.uniform(10, 40)), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(3, 13)):  # random lines
        p1 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        p2 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        cv2.line(img, p1, p2, _random_color(rng), int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(rng.integers(2, 7)):  # soft ellipses
        m = np.zeros(hw, np.uint8)
        cv2.ellipse(m, (int(rng.uniform(0, w)), int(rng.uniform(0, h))),
                    (int(rng.uniform(8, 60)), int(rng.uniform(8, 60))), rng.uniform(0, 180), 0, 360, 255, -1)
        _blend(img, m, _random_color(rng), rng.uniform(0.2, 0.6))
    return img


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    x, y, w, h = cv2.boundingRect(mask)
    return (x, y, x + w, y + h) if w and h else None


def _gradient(c1, c2, angle: float, period: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Colour ramp c1 -> c2 -> c1 along `angle` (a triangle wave of `period` px), on the grid xs x ys."""
    t = np.abs(((xs[None, :] * math.cos(angle) + ys[:, None] * math.sin(angle)) / period) % 2.0 - 1.0)
    return np.asarray(c1, np.float32) * (1 - t[..., None]) + np.asarray(c2, np.float32) * t[..., None]


def _blend(img: np.ndarray, mask: np.ndarray, paint, alpha: float = 1.0) -> None:
    """Paint over img where mask > 0, in place. `paint`: a BGR triple or (c1, c2, angle, period) gradient."""
    box = _bbox(mask)
    if box is None:
        return
    x1, y1, x2, y2 = box
    a = mask[y1:y2, x1:x2, None].astype(np.float32) * (alpha / 255)
    if len(paint) == 4:
        col = _gradient(*paint, np.arange(x1, x2, dtype=np.float32), np.arange(y1, y2, dtype=np.float32))
    else:
        col = np.array(paint, np.float32)
    img[y1:y2, x1:x2] = img[y1:y2, x1:x2] * (1 - a) + col * a


def _fill(rng: np.random.Generator, imgsz: int):
    """Object paint: a flat colour (60%) or a repeating two-colour gradient in a random direction."""
    if rng.random() < 0.6:
        return _random_color(rng)
    return _random_color(rng), _random_color(rng), rng.uniform(0, 2 * math.pi), imgsz / rng.uniform(1, 4)


def render_sample(rng: np.random.Generator, imgsz: int, names: Sequence[str], min_size: float = 16.0,
                  max_size: float = 0.0, max_objects: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One image (BGR uint8, imgsz x imgsz) and its labels (n, 5) [cls, cx, cy, w, h] normalised.

    Class shapes: 1 to max_objects, min_size to max_size px (0: min(120, 0.47 imgsz)), log-uniform."""
    hw = (imgsz, imgsz)
    img = _background(rng, hw)
    layers: list[tuple[np.ndarray, int | None]] = []  # (mask, class or None) in drawing order
    for _ in range(rng.integers(0, 4)):
        layers.append((_distractor_mask(rng, hw), None))
    smax = min(float(max_size), imgsz * 0.98) if max_size else min(120.0, imgsz * 0.47)
    for _ in range(rng.integers(1, max_objects + 1)):
        c = int(rng.integers(len(names)))
        size = math.exp(rng.uniform(math.log(min_size), math.log(smax)))
        cx, cy = rng.uniform(size / 2, imgsz - size / 2), rng.uniform(size / 2, imgsz - size / 2)
        layers.append((shape_mask(names[c], size, rng.uniform(0, 2 * math.pi), cx, cy, hw), c))
    for _ in range(rng.integers(0, 3)):
        layers.append((_distractor_mask(rng, hw), None))
    for mask, _ in layers:
        _blend(img, mask, _fill(rng, imgsz))
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(3, 12)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    labels, covered = [], np.zeros(hw, bool)
    for mask, c in reversed(layers):  # back to front: `covered` = union of everything drawn later
        own = mask >= 128
        if c is not None:
            visible = own & ~covered
            if visible.sum() >= MIN_VISIBLE * max(own.sum(), 1):
                x1, y1, x2, y2 = _bbox(visible.view(np.uint8))
                labels.append([c, (x1 + x2) / 2 / imgsz, (y1 + y2) / 2 / imgsz, (x2 - x1) / imgsz, (y2 - y1) / imgsz])
        covered |= own
    return img, np.array(labels[::-1], dtype=np.float64).reshape(-1, 5)


def _write_split(root: Path, split: str, n: int, seed: int, imgsz: int, names: Sequence[str],
                 shape_args: dict) -> None:
    im_dir, lb_dir = root / "images" / split, root / "labels" / split
    im_dir.mkdir(parents=True, exist_ok=True)
    lb_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        img, labels = render_sample(rng, imgsz, names, **shape_args)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (im_dir / f"{i:06d}.jpg").write_bytes(buf.tobytes())
        rows = "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in labels)
        (lb_dir / f"{i:06d}.txt").write_text(rows)


def generate_shapes(
    root: str | Path, names: Sequence[str] = SHAPES, seed: int = 0, n_train: int = 800, n_val: int = 200,
    imgsz: int = 256, n_test: int = 0, min_size: float = 16.0, max_size: float = 0.0, max_objects: int = 8,
) -> Path:
    """Generate the dataset under `root` unless it already exists; returns root.

    Written to a temporary sibling folder first, then renamed into place (atomic: a concurrent or
    interrupted generation never leaves a partial dataset at `root`).
    """
    root = Path(root)
    params = {"seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test, "imgsz": imgsz, "names": list(names),
              "min_size": min_size}
    shape_args = {"min_size": min_size, "max_size": max_size, "max_objects": max_objects}
    if (max_size, max_objects) != (0.0, 8):  # recorded only when set, so older datasets' markers still match
        params.update(max_size=max_size, max_objects=max_objects)
    if root.exists():
        _check_params(root, params)
        return root
    for name in names:
        if name not in SHAPES:
            raise ValueError(f"unknown synthetic shape {name!r} in names; known: {', '.join(SHAPES)}")
    t0 = time.time()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
            if n:
                _write_split(tmp, split, n, seed, imgsz, names, shape_args)
        (tmp / "synthetic.json").write_text(json.dumps(params, indent=1))
        os.rename(tmp, root)
    except OSError:
        if not root.exists():  # a real failure, not another process that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dt = time.time() - t0
    LOGGER.info(f"synthetic dataset: {n_train} train, {n_val} val images of {imgsz}px in {root} ({dt:.1f}s)")
    return root


def _check_params(root: Path, params: dict) -> None:
    marker = root / "synthetic.json"
    try:
        old = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    if old != params:
        LOGGER.warning(f"{root} was generated with {old}, the yaml now asks {params}; delete the folder to regenerate")
