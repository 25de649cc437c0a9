"""Held-out dataset suite: five YOLO-format sets of different character, for benchmarks only.

None of these sets was used to choose any default, and the suite's seed (HELDOUT_SEED) serves
nothing else; keep it that way, or the suite stops being held out. Image content is real where a
dependency ships some (matplotlib's sample photograph, elevation model, MRI slice, gift-box icon
and typefaces: bench/sources.py), procedural otherwise:

- glyphs:  10 fine-grained classes, the digits 0-9 typeset in 14 real typefaces (no handwriting
           ships with our dependencies), 12-48 px tall, slightly rotated and sheared, 3-10 per
           256x256 image, on cluttered real textures (photo / relief / MRI crops, a second texture
           blended over, lines) with unlabelled letter glyphs as distractors.
- large:   few large objects: 1-3 card suits (spade, club, heart, diamond; solid or outline
           glyphs of the DejaVu typefaces) 90-230 px on 256x256, filled with a real texture or a
           flat colour, on a blurred real texture.
- single:  one class: matplotlib's gift-box icon, 20-120 px, hue-, scale-, aspect- and
           rotation-jittered, 0-5 per 256x256 image (about 10% of images have none), among
           hard negatives (plain boxes of the same colours, pieces of matplotlib's logo).
- aerial:  non-square images (320x192, 320x176, 288x160, 256x144 and 192x320 portrait) of a
           real hill-shaded elevation model, with 10-40 small procedural objects 8-30 px
           (car, truck, tree, house).
- lookalikes: glyphs made harder (issue 31): five look-alike pairs 0/O, 1/7, 3/8, 5/6, 2/Z as 10
           classes, 10-32 px tall, 22 typefaces (old-style cmmi10 digits among them), strokes thinned
           or thickened, half of them at lower contrast, 4-12 per image among 5-12 distractor glyphs
           that may cover them, 6-16 clutter lines.

Labels are the tight box of an object's visible pixels; an object less than 40% visible gets none.
Every image uses its own RNG seeded by (seed, set, split, index), so a set is the same whatever
else is generated. Layout per set: <root>/<set>/{images,labels}/{train,val}/000000.{jpg,txt} and
<root>/<set>/data.yaml (absolute `path`, so ultralytics reads it as we do).

`python -m bench.heldout --root datasets/heldout-v1` writes all five (800 train, 200 val each) and appends
their sizes and a checksum of their labels to bench/results/heldout.md (`--no-record`: not), so that a
result can be tied to the exact data it was measured on.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import yaml

from bench import sources
from bench.record import markdown_table, publish
from core.cli import setup_logging

LOGGER = logging.getLogger(__name__)
HELDOUT_SEED = 271828  # used for the held-out suite and nothing else
SPLITS = {"train": 0, "val": 1}
MIN_VISIBLE = 0.4
Sample = tuple[np.ndarray, np.ndarray]  # BGR uint8 image, (n, 5) [cls, cx, cy, w, h] normalised


@dataclass(frozen=True)
class HeldoutSet:
    names: tuple[str, ...]
    render: Callable[[np.random.Generator], Sample]
    summary: str


# --- compositing ---------------------------------------------------------------------------------

def _composite(img: np.ndarray, objects: Sequence[tuple[list, int | None]]) -> np.ndarray:
    """Paint objects in order onto img (float32, in place) and return the labels of those that stay visible.

    An object is (parts, class or None); parts are (alpha 0..1 (h, w), paint: BGR triple or (h, w, 3)
    image), drawn in order (details such as a rim or a windscreen are parts, not occluders). A class
    object keeps its label if at least MIN_VISIBLE of its pixels (alpha >= 0.5 in any part) are not
    covered by objects drawn later; the label is the tight box of those visible pixels."""
    h, w = img.shape[:2]
    masks = []
    for parts, _ in objects:
        for alpha, paint in parts:
            a = alpha[..., None]
            img *= 1 - a
            img += a * (np.asarray(paint, np.float32) if isinstance(paint, tuple) else paint)
        masks.append(np.logical_or.reduce([alpha >= 0.5 for alpha, _ in parts]))
    labels, covered = [], np.zeros((h, w), bool)
    for own, (_, c) in zip(reversed(masks), reversed(objects)):  # back to front: `covered` = drawn later
        if c is not None and own.any():
            visible = own & ~covered
            if visible.sum() >= MIN_VISIBLE * own.sum():
                x, y, bw, bh = cv2.boundingRect(visible.astype(np.uint8))
                labels.append([c, (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
        covered |= own
    return np.array(labels[::-1], np.float64).reshape(-1, 5)


def _finish(img: np.ndarray, rng: np.random.Generator, noise: tuple[float, float] = (2, 8)) -> np.ndarray:
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(*noise)
    out = np.clip(img, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(out, (3, 3), 0) if rng.random() < 0.2 else out


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(60, 255), rng.uniform(60, 255)]]])
    return tuple(float(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _contrasting(rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray,
                 min_diff: float = 70) -> tuple[float, float, float]:
    """A random colour whose brightness differs from the background under `alpha` by at least `min_diff`."""
    under = float((img.mean(2) * alpha).sum() / max(alpha.sum(), 1e-6))
    c = np.array(_colour(rng))
    if abs(c.mean() - under) < min_diff:
        c = np.clip(c + (min_diff + 20 if under < 128 else -min_diff - 20) - (c.mean() - under), 0, 255)
    return tuple(float(v) for v in c)


def _ring(alpha: np.ndarray, width: int) -> np.ndarray:
    """The outline of a soft mask, `width` px wide."""
    k = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return np.clip(alpha - cv2.erode(alpha, k), 0, 1)


# --- the sets -------------------------------------------------------------------------------------

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DISTRACTOR_CHARS = "ACEFHKMNPRTUVWXYacdefhkmnprtuvwxy#%&@?"  # none easily read as a digit


def _glyph_layer(rng, hw, char: str, size: float) -> np.ndarray:
    font = sources.FONTS[rng.integers(len(sources.FONTS))]
    h, w = hw
    center = (rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2))
    return sources.warp(sources.glyph(char, font), size, rng.uniform(-15, 15), rng.uniform(-0.2, 0.2),
                        rng.uniform(0.8, 1.2), center, hw)


def render_glyphs(rng: np.random.Generator) -> Sample:
    hw = (256, 256)
    img = sources.texture(rng, hw)
    a = rng.uniform(0.3, 0.6)
    img = img * (1 - a) + sources.texture(rng, hw) * a
    for _ in range(rng.integers(4, 12)):  # clutter lines
        p1, p2 = tuple(int(v) for v in rng.uniform(0, 256, 2)), tuple(int(v) for v in rng.uniform(0, 256, 2))
        cv2.line(img, p1, p2, _colour(rng), int(rng.integers(1, 3)), cv2.LINE_AA)
    layers = []
    size = lambda: float(np.exp(rng.uniform(np.log(12), np.log(48))))  # noqa: E731
    for _ in range(rng.integers(3, 9)):
        m = _glyph_layer(rng, hw, DISTRACTOR_CHARS[rng.integers(len(DISTRACTOR_CHARS))], size())
        layers.append(([(m, _contrasting(rng, img, m))], None))
    for _ in range(rng.integers(3, 11)):
        c = int(rng.integers(10))
        m = _glyph_layer(rng, hw, str(c), size())
        layers.append(([(m, _contrasting(rng, img, m))], c))
    labels = _composite(img, layers)
    return _finish(img, rng), labels


# lookalikes: glyphs made harder. Five look-alike pairs, smaller, more typefaces (old-style cmmi10 digits
# among them), stroke weight varied, lower contrast, denser clutter.
LOOKALIKE_CHARS = "0O1738562Z"
LOOKALIKES = ("zero", "letter-O", "one", "seven", "three", "eight", "five", "six", "two", "letter-Z")
LOOKALIKE_FONTS = (*sources.FONTS, "DejaVuSans-BoldOblique", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique",
                   "DejaVuSerif-BoldItalic", "STIXGeneralBolIta", "cmb10", "cmti10", "cmmi10")


def _lookalike_layer(rng, hw, char: str, size: float) -> np.ndarray:
    mask = sources.glyph(char, LOOKALIKE_FONTS[rng.integers(len(LOOKALIKE_FONTS))])
    weight = int(rng.integers(-2, 3))  # thinner or bolder strokes than the typeface's own (at 96 px)
    if weight:
        k = np.ones((2 * abs(weight) + 1,) * 2, np.uint8)
        mask = (cv2.dilate if weight > 0 else cv2.erode)(np.pad(mask, 2 * abs(weight)), k)
    h, w = hw
    center = (rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2))
    return sources.warp(mask, size, rng.uniform(-20, 20), rng.uniform(-0.25, 0.25), rng.uniform(0.7, 1.3), center, hw)


def render_lookalikes(rng: np.random.Generator) -> Sample:
    hw = (256, 256)
    img = sources.texture(rng, hw)
    a = rng.uniform(0.3, 0.7)
    img = img * (1 - a) + sources.texture(rng, hw) * a
    for _ in range(rng.integers(6, 17)):  # clutter lines
        p1, p2 = tuple(int(v) for v in rng.uniform(0, 256, 2)), tuple(int(v) for v in rng.uniform(0, 256, 2))
        cv2.line(img, p1, p2, _colour(rng), int(rng.integers(1, 3)), cv2.LINE_AA)
    size = lambda: float(np.exp(rng.uniform(np.log(10), np.log(32))))  # noqa: E731
    contrast = lambda: 70.0 if rng.random() < 0.5 else 40.0  # noqa: E731
    layers = []
    for _ in range(rng.integers(5, 13)):
        m = _lookalike_layer(rng, hw, DISTRACTOR_CHARS[rng.integers(len(DISTRACTOR_CHARS))], size())
        layers.append(([(m, _contrasting(rng, img, m, contrast()))], None))
    for _ in range(rng.integers(4, 13)):
        c = int(rng.integers(len(LOOKALIKES)))
        m = _lookalike_layer(rng, hw, LOOKALIKE_CHARS[c], size())
        layers.append(([(m, _contrasting(rng, img, m, contrast()))], c))
    order = rng.permutation(len(layers))  # distractors may cover classes
    labels = _composite(img, [layers[i] for i in order])
    return _finish(img, rng), labels


SUITS = ("spade", "club", "heart", "diamond")
SUIT_CHARS = ("\u2660\u2664", "\u2663\u2667", "\u2665\u2661", "\u2666\u2662")  # solid, outline
SUIT_FONTS = tuple(f for f in sources.FONTS if f.startswith("DejaVu"))  # the others have no suits


def render_large(rng: np.random.Generator) -> Sample:
    hw = (256, 256)
    img = cv2.GaussianBlur(sources.texture(rng, hw), (0, 0), rng.uniform(1.5, 4))
    layers = []
    for _ in range(rng.integers(1, 4)):
        c = int(rng.integers(len(SUITS)))
        char = SUIT_CHARS[c][int(rng.random() < 0.3)]
        size = rng.uniform(90, 230)
        half = size / 2 * 0.8
        center = (rng.uniform(half, 256 - half), rng.uniform(half, 256 - half))
        m = sources.warp(sources.glyph(char, SUIT_FONTS[rng.integers(len(SUIT_FONTS))]), size,
                         rng.uniform(-30, 30), rng.uniform(-0.15, 0.15), rng.uniform(0.75, 1.3), center, hw)
        paint = sources.texture(rng, hw) if rng.random() < 0.5 else _contrasting(rng, img, m)
        parts = [(m, paint)]
        if rng.random() < 0.5:  # a dark or light rim
            parts.append((_ring(m, int(rng.integers(2, 5))), (20.0, 20.0, 20.0) if rng.random() < 0.5 else (235.0,) * 3))
        layers.append((parts, c))
    labels = _composite(img, layers)
    return _finish(img, rng), labels


def _hue_shift(bgr: np.ndarray, shift: float, gain: float) -> np.ndarray:
    hsv = cv2.cvtColor(np.clip(bgr, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + shift) % 180
    hsv[..., 2] = np.clip(hsv[..., 2] * gain, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)


def _sprite_layer(rng, hw, rgba: np.ndarray, size: float, shift: float, gain: float, angle: float):
    h, w = hw
    center = (rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2))
    aspect = rng.uniform(0.8, 1.25)
    colour = sources.warp(_hue_shift(rgba[..., :3], shift, gain), size, angle, 0.0, aspect, center, hw)
    alpha = sources.warp(np.ascontiguousarray(rgba[..., 3]), size, angle, 0.0, aspect, center, hw)
    return alpha, colour


def render_single(rng: np.random.Generator) -> Sample:
    hw = (256, 256)
    img = sources.texture(rng, hw)
    gift, logo = sources.sprite_rgba("gift"), sources.sprite_rgba("logo")
    layers = []
    for _ in range(rng.integers(1, 5)):  # hard negatives
        angle = rng.uniform(-25, 25)
        if rng.random() < 0.5:  # a plain box: the gift's silhouette and colours without its ribbon
            plain = gift.copy()
            plain[..., :3] = np.median(gift[..., :3][gift[..., 3] > 0.5], 0)
            alpha, colour = _sprite_layer(rng, hw, plain, rng.uniform(20, 120), rng.uniform(0, 180), rng.uniform(0.6, 1.2), angle)
        else:  # a piece of the logo
            x0 = int(rng.integers(0, logo.shape[1] - 60))
            piece = np.ascontiguousarray(logo[:, x0:x0 + int(rng.integers(40, 140))])
            alpha, colour = _sprite_layer(rng, hw, piece, rng.uniform(20, 80), rng.uniform(0, 180), 1.0, angle)
        layers.append(([(alpha, colour)], None))
    n = 0 if rng.random() < 0.1 else int(rng.integers(1, 6))
    for _ in range(n):
        shift = rng.uniform(0, 180) if rng.random() < 0.5 else rng.uniform(-10, 10)
        alpha, colour = _sprite_layer(rng, hw, gift, float(np.exp(rng.uniform(np.log(20), np.log(120)))),
                                      shift, rng.uniform(0.6, 1.2), rng.uniform(-25, 25))
        layers.append(([(alpha, colour)], 0))
    order = rng.permutation(len(layers))  # negatives and gifts occlude each other in any order
    labels = _composite(img, [layers[i] for i in order])
    return _finish(img, rng), labels


VEHICLES = ("car", "truck", "tree", "house")
AERIAL_SIZES = ((192, 320), (176, 320), (160, 288), (144, 256), (320, 192))  # (h, w)


def _rect(hw, center, length, width, angle) -> np.ndarray:
    m = np.zeros(hw, np.float32)
    pts = cv2.boxPoints(((center[0], center[1]), (length, width), angle))
    cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    return m


def _aerial_object(rng, hw, c: int) -> tuple[list, int]:
    h, w = hw
    center = (rng.uniform(8, w - 8), rng.uniform(8, h - 8))
    angle = rng.uniform(0, 180)
    if c == 0:  # car: 2:1 body and a dark windscreen
        length = rng.uniform(10, 18)
        body = _rect(hw, center, length, length / 2, angle)
        a = np.radians(angle)
        front = (center[0] + np.cos(a) * length * 0.15, center[1] + np.sin(a) * length * 0.15)
        return [(body, _colour(rng)), (_rect(hw, front, length * 0.2, length * 0.4, angle), (30.0, 30.0, 30.0))], c
    if c == 1:  # truck: 3:1 trailer and a separate cab
        length = rng.uniform(18, 30)
        a = np.radians(angle)
        cab_c = (center[0] + np.cos(a) * length * 0.55, center[1] + np.sin(a) * length * 0.55)
        trailer = _rect(hw, center, length * 0.8, length / 3, angle)
        cab = _rect(hw, cab_c, length * 0.22, length / 3.3, angle)
        return [(np.maximum(trailer, cab), _colour(rng)), (trailer, (rng.uniform(150, 240),) * 3)], c
    if c == 2:  # tree: soft green crown, darker core
        r = rng.uniform(4, 9)
        m = np.zeros(hw, np.float32)
        cv2.circle(m, (round(center[0] * 16), round(center[1] * 16)), round(r * 16), 1.0, -1, cv2.LINE_AA, shift=4)
        core = cv2.GaussianBlur(m, (0, 0), r / 3) * m
        green = (rng.uniform(20, 60), rng.uniform(90, 160), rng.uniform(20, 60))
        return [(m, green), (core * 0.6, (10.0, 50.0, 10.0))], c
    side = rng.uniform(12, 24)  # house: a roof of two halves and a ridge
    roof = _rect(hw, center, side, side * rng.uniform(0.7, 1.0), angle)
    base = np.array((rng.uniform(30, 90), rng.uniform(40, 90), rng.uniform(120, 200)))  # reddish or greyish
    if rng.random() < 0.4:
        base = np.full(3, rng.uniform(90, 200))
    a = np.radians(angle)
    half_c = (center[0] - np.sin(a) * side * 0.2, center[1] + np.cos(a) * side * 0.2)
    half = _rect(hw, half_c, side, side * 0.4, angle) * roof
    ridge = _rect(hw, center, side, 1.5, angle) * roof
    return [(roof, tuple(float(v) for v in base)), (half, tuple(float(v) for v in base * 0.7)),
            (ridge, (40.0, 40.0, 40.0))], c


def render_aerial(rng: np.random.Generator) -> Sample:
    hw = AERIAL_SIZES[rng.integers(len(AERIAL_SIZES))]
    img = sources.texture(rng, hw, "terrain" if rng.random() < 0.7 else "relief")
    for _ in range(rng.integers(0, 4)):  # roads
        p1 = tuple(int(v) for v in rng.uniform(0, max(hw), 2))
        p2 = tuple(int(v) for v in rng.uniform(0, max(hw), 2))
        cv2.line(img, p1, p2, (rng.uniform(90, 140),) * 3, int(rng.integers(3, 8)), cv2.LINE_AA)
    layers = []
    for _ in range(rng.integers(10, 41)):
        c = int(rng.choice(4, p=(0.4, 0.15, 0.3, 0.15)))
        layers.append(_aerial_object(rng, hw, c))
    labels = _composite(img, layers)
    return _finish(img, rng, noise=(1, 5)), labels


SETS: dict[str, HeldoutSet] = {
    "glyphs": HeldoutSet(DIGITS, render_glyphs, "10 fine-grained digit classes, 12-48 px, cluttered real textures"),
    "large": HeldoutSet(SUITS, render_large, "1-3 large card-suit objects, 90-230 px"),
    "single": HeldoutSet(("gift",), render_single, "one class (gift icon) among hard negatives"),
    "aerial": HeldoutSet(VEHICLES, render_aerial, "non-square aerial images, 10-40 small objects"),
    "lookalikes": HeldoutSet(LOOKALIKES, render_lookalikes, "5 look-alike pairs (0/O 1/7 3/8 5/6 2/Z), 10-32 px, "
                             "22 typefaces, varied stroke weight and contrast, dense clutter"),
}


# --- writing -------------------------------------------------------------------------------------

def render(name: str, split: str, index: int, seed: int = HELDOUT_SEED) -> Sample:
    """Image `index` of `split` of held-out set `name` (deterministic for the seed)."""
    if name not in SETS:
        raise ValueError(f"unknown held-out set {name!r}; known: {', '.join(SETS)}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), SPLITS[split], index])
    return SETS[name].render(rng)


def _write_set(root: Path, name: str, n: dict[str, int], seed: int) -> None:
    for split, count in n.items():
        im_dir, lb_dir = root / "images" / split, root / "labels" / split
        im_dir.mkdir(parents=True, exist_ok=True)
        lb_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, labels = render(name, split, i, seed)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            (im_dir / f"{i:06d}.jpg").write_bytes(buf.tobytes())
            (lb_dir / f"{i:06d}.txt").write_text("".join(
                f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in labels))


def _data_yaml(root: Path, names: Sequence[str]) -> str:
    return yaml.safe_dump({"path": str(root.resolve()), "train": "images/train", "val": "images/val",
                           "names": dict(enumerate(names))}, sort_keys=False)


def generate_heldout(root: str | Path, sets: Sequence[str] | None = None, seed: int = HELDOUT_SEED,
                     n_train: int = 800, n_val: int = 200) -> dict[str, Path]:
    """Write the held-out sets under root/<set>/ unless already there (same parameters); return {set: data.yaml}.

    Each set is written to a temporary sibling folder and renamed into place, so an interrupted run
    never leaves half a set. A folder made with other parameters is regenerated."""
    root = Path(root)
    out = {}
    for name in sets or list(SETS):
        if name not in SETS:
            raise ValueError(f"unknown held-out set {name!r}; known: {', '.join(SETS)}")
        target = root / name
        params = {"set": name, "seed": seed, "n_train": n_train, "n_val": n_val, "names": list(SETS[name].names)}
        marker = target / "heldout.json"
        if marker.exists() and json.loads(marker.read_text()) == params and (target / "data.yaml").exists():
            out[name] = target / "data.yaml"
            continue
        t0 = time.time()
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_set(tmp, name, {"train": n_train, "val": n_val}, seed)
            marker_tmp = tmp / "heldout.json"
            marker_tmp.write_text(json.dumps(params, indent=1))
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        (target / "data.yaml").write_text(_data_yaml(target, SETS[name].names))
        LOGGER.info(f"held-out set {name}: {n_train} train, {n_val} val images in {target} ({time.time() - t0:.1f}s)")
        out[name] = target / "data.yaml"
    return out


def fingerprint(data_yaml: Path) -> tuple[int, int, int, str]:
    """(train images, val images, labelled objects, sha256 of all label files in order, 12 hex) of one set."""
    root, digest, objects = data_yaml.parent, hashlib.sha256(), 0
    counts = []
    for split in SPLITS:
        files = sorted((root / "labels" / split).glob("*.txt"))
        counts.append(len(files))
        for f in files:
            text = f.read_bytes()
            digest.update(f"{split}/{f.name}\n".encode() + text)
            objects += text.count(b"\n")
    return counts[0], counts[1], objects, digest.hexdigest()[:12]


def table(yamls: dict[str, Path], seed: int) -> str:
    """One row per set: its size and a checksum of its labels, so results can be tied to the data they used."""
    rows = [(name, *fingerprint(path), SETS[name].summary) for name, path in yamls.items()]
    return (f"held-out suite, seed {seed}\n\n"
            + markdown_table(["set", "train images", "val images", "objects", "labels sha256", "what"], rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.heldout", description="Write the held-out dataset suite.")
    p.add_argument("--root", default="datasets/heldout-v1")
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of: {', '.join(SETS)}")
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--seed", type=int, default=HELDOUT_SEED, help="change only to make a different suite")
    p.add_argument("--no-record", action="store_true", help="do not append the suite's checksums to "
                   "bench/results/heldout.md")
    args = p.parse_args(argv)
    setup_logging()
    yamls = generate_heldout(args.root, args.sets.split(","), args.seed, args.n_train, args.n_val)
    for name, yaml_path in yamls.items():
        print(f"{name:8s} {yaml_path}")
    text = table(yamls, args.seed)
    publish("heldout", text, "bench.heldout", argv, keep=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
