"""The planted-gain tasks of `bench.planted`: (dataset, base hyp, search space) triples whose base hyp is wrong in
one or two known genes, with the fix. Each task names the space a user would search for it, the planted genes
searched (a gene with gain 0 could never be recovered).

- lr:      typeset digits 2, 4, 5, 7 (3-6 per image, 15-30% of its side) on flat colours; the finetune lr0 a
           decade too high for AdamW (0.02; the quick study's measured 0.002 is right).
- mirror:  typeset b, d, p, q (2-5 per image) on real textures: b/d and p/q are mirror images, so a left-right
           flip relabels the object as the other class; base fliplr 0.5, fix fliplr 0. No mosaic involved
           (off on both sides). The base run learns them without flips: the finetune's flips un-teach it.
- large:   1-2 large letters A, K, R, Z (45-80% of the image side) on real textures, AutoMosaic off, base
           mosaic 1.0, fix mosaic 0.
All three are typeset (bench/sources.py glyphs): at 96 px the built-in shapes learned too slowly for a base run
this short (fitness 0.02 after 80 epochs, and the lr task's planted gain was then 0.006 ± 0.005, p 0.09).

Data (96 px images, small: the bench runs 150+ trainings on 2 cores) is generated under
datasets/planted-v1/<task>/ (git-ignored), deterministic for the seed: an RNG per image seeded by (seed, task, split, index). Every task trains a base run once with its from-scratch hyp
(`Task.base_run`: large's carries its planted mosaic; lr's planted lr0 is an error of the finetune recipe
only; mirror's base run is trained right, without flips, so that 5 epochs of a wrong finetune show) and the
trials finetune its best.pt, as in the quick study. The lr and mirror trials run without mosaic, as their base
runs end (at 96 px a mosaic halves objects: with it, 5-epoch finetunes of the lr task fell from the base
run's fitness 0.021 to 0.003).
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from bench import sources
from core.hyp import load_hyp

__all__ = ["DATA_ROOT", "GLYPH_SETS", "PLANTED_SEED", "TASKS", "GlyphSet", "Task", "render_glyphs", "task_data", "task_hyps",
           "task_space"]

DATA_ROOT = Path("datasets") / "planted-v1"
PLANTED_SEED = 31  # the planted tasks' data seed (no other use)
QUICK_SPACE = Path(__file__).resolve().parent.parent / "studies" / "space-adamw.yaml"
FINETUNE_HYP = Path(__file__).resolve().parent.parent / "studies" / "hyp" / "adamw-finetune.yaml"
SCRATCH_HYP = Path(__file__).resolve().parent.parent / "studies" / "hyp" / "adamw-short.yaml"
IMGSZ = 96  # generated image size (objects scale with it)


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    base: dict[str, float]        # the task's finetune hyp = adamw-finetune.yaml + these (the planted error in it)
    fix: dict[str, float]         # the planted genes' right values
    base_run: dict[str, float]    # the base run's hyp (from scratch) = adamw-short.yaml + these
    close_mosaic: bool = True     # the base run's last quarter without mosaic (the quick study's 10 of 30)
    space: dict[str, dict] = field(default_factory=dict)  # space-adamw.yaml's genes changed for this task
    names: tuple[str, ...] = ()


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("lr", "typeset digits on flat colours, finetune lr0 0.02 (a decade above AdamW's 0.002)",
         {"lr0": 0.02, "mosaic": 0.0}, {"lr0": 0.002}, base_run={},
         space={"lr0": {"gain": 1, "low": 1.0e-5, "high": 0.05, "log": True}}, names=("two", "four", "five", "seven")),
    Task("mirror", "typeset b/d/p/q (mirror-image classes) on real textures, fliplr 0.5", {"fliplr": 0.5,
         "mosaic": 0.0}, {"fliplr": 0.0}, base_run={"fliplr": 0.0}, space={"fliplr": {"gain": 1, "low": 0.0, "high": 1.0}},
         names=("b", "d", "p", "q")),
    Task("large", "1-2 large letters (45-80% of the side) on real textures, AutoMosaic off, mosaic 1.0",
         {"mosaic": 1.0}, {"mosaic": 0.0}, base_run={"mosaic": 1.0}, close_mosaic=False, names=("A", "K", "R", "Z")),
)}


def task_hyps(task: Task) -> dict[str, dict[str, float]]:
    """The task's full hyps: base (planted error), fixed (the fix applied), base_run (the from-scratch recipe)."""
    base = load_hyp({**yaml.safe_load(FINETUNE_HYP.read_text()), **task.base})
    scratch = yaml.safe_load(SCRATCH_HYP.read_text())
    return {"base": base, "fixed": {**base, **task.fix},
            "base_run": load_hyp({**scratch, **task.base_run})}


def task_space(task: Task) -> dict[str, dict]:
    """space-adamw.yaml with the task's genes changed (its planted genes searched)."""
    space = yaml.safe_load(QUICK_SPACE.read_text())
    space.update(task.space)
    return space


# --- data ----------------------------------------------------------------------------------------

GLYPH_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono", "DejaVuSansMono-Bold", "cmss10")


@dataclass(frozen=True)
class GlyphSet:
    chars: str                    # class i is chars[i]
    size: tuple[float, float]     # glyph height, share of the image side
    count: tuple[int, int]        # glyphs per image, [low, high)
    textured: bool                # a blurred real texture behind (else a flat colour with a gradient)


GLYPH_SETS = {"lr": GlyphSet("2457", (0.15, 0.30), (3, 7), False),
              "mirror": GlyphSet("bdpq", (0.17, 0.36), (2, 6), True),
              "large": GlyphSet("AKRZ", (0.45, 0.80), (1, 3), True)}


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    a = alpha[..., None]
    img *= 1 - a
    img += a * colour


def _background(rng: np.random.Generator, hw: tuple[int, int], textured: bool) -> np.ndarray:
    if textured:
        return cv2.GaussianBlur(sources.texture(rng, hw), (0, 0), rng.uniform(1.0, 3.0))
    ramp = np.linspace(-1, 1, hw[1], dtype=np.float32)[None, :, None] * rng.uniform(-30, 30, 3).astype(np.float32)
    return np.clip(rng.uniform(40, 215, 3).astype(np.float32) + ramp + np.zeros((*hw, 3), np.float32), 0, 255)


def render_glyphs(rng: np.random.Generator, spec: GlyphSet, hw: tuple[int, int] = (IMGSZ, IMGSZ)) -> tuple[np.ndarray, np.ndarray]:
    """One image of upright typeset characters (class i = spec.chars[i]), on a background; labels (n, 5)
    [cls, cx, cy, w, h] normalised. Characters do not overlap (a placement that would is skipped)."""
    h, w = hw
    img = _background(rng, hw, spec.textured)
    taken = np.zeros(hw, np.uint8)
    labels = []
    for _ in range(int(rng.integers(*spec.count))):
        c = int(rng.integers(len(spec.chars)))
        size = rng.uniform(*spec.size) * min(h, w)
        center = (rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2))
        m = sources.warp(sources.glyph(spec.chars[c], GLYPH_FONTS[rng.integers(len(GLYPH_FONTS))]), size,
                         rng.uniform(-8, 8), rng.uniform(-0.1, 0.1), rng.uniform(0.85, 1.15), center, hw)
        own = m >= 0.5
        if not own.any() or (own & cv2.dilate(taken, np.ones((5, 5), np.uint8)).astype(bool)).any():
            continue
        under = float(img[own].mean())
        colour = np.full(3, 20.0 if under > 128 else 235.0, np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        _paint(img, m, colour)
        taken |= own.astype(np.uint8)
        x, y, bw, bh = cv2.boundingRect(own.astype(np.uint8))
        labels.append([c, (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(2, 6)
    return np.clip(img, 0, 255).astype(np.uint8), np.array(labels, np.float64).reshape(-1, 5)


def _write_rendered(root: Path, task: str, seed: int, counts: dict[str, int]) -> None:
    spec = GLYPH_SETS[task]
    for split_id, (split, n) in enumerate(counts.items()):
        im_dir, lb_dir = root / "images" / split, root / "labels" / split
        im_dir.mkdir(parents=True, exist_ok=True)
        lb_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, labels = render_glyphs(np.random.default_rng([seed, zlib.crc32(task.encode()), split_id, i]), spec)
            buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1]
            (im_dir / f"{i:06d}.jpg").write_bytes(buf.tobytes())
            (lb_dir / f"{i:06d}.txt").write_text("".join(
                f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in labels))


def task_data(task: Task, root: Path | str = DATA_ROOT, n_train: int = 400, n_val: int = 100,
              seed: int = PLANTED_SEED) -> Path:
    """Write the task's dataset under root/<task>/ unless there with the same parameters; return its data.yaml.
    Written to a temporary sibling and renamed into place: an interrupted run never leaves half a set."""
    target = Path(root) / task.name
    params: dict[str, Any] = {"task": task.name, "seed": seed, "n_train": n_train, "n_val": n_val, "imgsz": IMGSZ,
                              "names": list(task.names)}
    marker = target / "planted.json"
    if marker.is_file() and json.loads(marker.read_text()) == params and (target / "data.yaml").is_file():
        return target / "data.yaml"
    tmp = target.parent / f".{task.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write_rendered(tmp / "set", task.name, seed, {"train": n_train, "val": n_val})
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = {"path": "set", "train": "images/train", "val": "images/val", "names": dict(enumerate(task.names))}
    (target / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    marker.write_text(json.dumps(params, indent=1))  # written last: a set cut short is redone
    return target / "data.yaml"
