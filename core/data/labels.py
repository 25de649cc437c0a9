"""Verify images and YOLO label files, with a cache of the results.

Each label row is `cls cx cy w h`, normalised to [0, 1]. A polygon row `cls x1 y1 x2 y2 x3 y3 ...`
(an odd number of columns, at least 7: the ultralytics segment format) is read as the bounding
box of its points. Every bad row is logged (logger "core.data", one warning naming file, line and
reason) and skipped; the other rows of the file are kept. Reasons: wrong column count,
non-numeric value, coordinate outside [0, 1] (tolerance 1e-4), class id not an integer in
[0, nc), zero-size box, duplicate row. An unreadable, undecodable (e.g. truncated) or tiny (<10 px) image is logged
and skipped. An image without a label file is a background image and is kept.

The results are cached as JSON in a `.yep.cache` file (see files.label_cache_path), keyed by a hash
of every image and label path with its size and mtime (and nc); a stale cache is rebuilt and the
warnings stored in it are logged again on reuse.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from core.atomic import atomic_write

from .files import as_source_list, img2label_path, label_cache_path, list_image_files

LOGGER = logging.getLogger(__name__)
CACHE_VERSION = 1
COORD_EPS = 1e-4  # tolerance on normalised coordinates (rounding in label writers)
MIN_IMAGE_SIZE = 10


@dataclass
class ImageRecord:
    """Verification result of one image and its label file."""

    im_file: str
    lb_file: str
    status: str  # 'found' | 'missing' (no label file) | 'empty' (no usable row) | 'corrupt'
    shape: tuple[int, int] = (0, 0)  # (h, w) of the image as decoded
    labels: list[list[float]] = field(default_factory=list)  # rows [cls, cx, cy, w, h]
    messages: list[str] = field(default_factory=list)  # one warning per bad row / image
    bad_rows: int = 0


@dataclass
class LabelSet:
    """Usable images (corrupt ones removed) with their labels and the verification summary."""

    im_files: list[str]
    label_files: list[str]
    labels: list[np.ndarray]  # float32 (n, 5) [cls, cx, cy, w, h]
    shapes: np.ndarray  # int (N, 2) (h, w)
    counts: dict[str, int]
    cache_file: Path | None
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> rows or images left out


class NoLabelsError(ValueError):
    """A training set in which no label row is usable (it would train on background only)."""


def _check_image(im_file: str) -> tuple[tuple[int, int], str | None]:
    """(h, w) of the decoded image, or an error reason."""
    try:
        with open(im_file, "rb") as f:
            data = f.read()
    except OSError as e:
        return (0, 0), f"unreadable ({e.strerror})"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        return (0, 0), "cannot be decoded"
    h, w = img.shape[:2]
    if h < MIN_IMAGE_SIZE or w < MIN_IMAGE_SIZE:
        return (h, w), f"image size {w}x{h} < {MIN_IMAGE_SIZE} px"
    return (h, w), None


def parse_label_row(parts: list[str], nc: int | None) -> tuple[list[float] | None, str | None]:
    """One label row -> ([cls, cx, cy, w, h], None) or (None, reason)."""
    n = len(parts)
    if n != 5 and not (n >= 7 and n % 2 == 1):
        return None, f"wrong column count {n} (expected 5: cls cx cy w h)"
    try:
        values = [float(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not _is_float(p))
        return None, f"non-numeric value {bad!r}"
    if not all(math.isfinite(v) for v in values):
        return None, "non-numeric value (nan/inf)"
    c = values[0]
    if c != round(c):
        return None, f"class id {parts[0]!r} is not an integer"
    if c < 0 or (nc is not None and c >= nc):
        upper = f"{nc - 1}" if nc is not None else "inf"
        return None, f"class id {int(c)} outside [0, {upper}]"
    coords = values[1:]
    for name, v in zip(("cx", "cy", "w", "h") if n == 5 else ("x", "y") * (n // 2), coords):
        if v < -COORD_EPS or v > 1 + COORD_EPS:
            return None, f"coordinate outside [0, 1]: {name}={v:g}"
    if n > 5:  # polygon -> its bounding box
        xs, ys = coords[0::2], coords[1::2]
        coords = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
    cx, cy, w, h = coords
    # clip the box to the image (rows within the tolerance may poke out by COORD_EPS)
    x1, y1 = max(cx - w / 2, 0.0), max(cy - h / 2, 0.0)
    x2, y2 = min(cx + w / 2, 1.0), min(cy + h / 2, 1.0)
    if x2 - x1 <= 1e-6 or y2 - y1 <= 1e-6:
        return None, f"zero-size box (w={w:g}, h={h:g})"
    return [c, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], None


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def verify_image_label(im_file: str, lb_file: str, nc: int | None) -> ImageRecord:
    """Check one image and its label file; bad rows are reported and left out."""
    shape, reason = _check_image(im_file)
    if reason is not None:
        msg = f"{im_file}: corrupt image, {reason}; skipped"
        return ImageRecord(im_file, lb_file, "corrupt", shape, messages=[msg])
    if not os.path.isfile(lb_file):
        return ImageRecord(im_file, lb_file, "missing", shape)
    rec = ImageRecord(im_file, lb_file, "found", shape)
    try:
        lines = Path(lb_file).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        rec.messages.append(f"{lb_file}: unreadable label file ({e}); image kept without labels")
        rec.status = "empty"
        return rec
    seen: dict[tuple[float, ...], int] = {}
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        row, reason = parse_label_row(parts, nc)
        if row is not None:
            key = tuple(row)
            if key in seen:
                row, reason = None, f"duplicate of line {seen[key]}"
            else:
                seen[key] = lineno
        if row is None:
            rec.messages.append(f"{lb_file}:{lineno}: {reason}; row skipped")
            rec.bad_rows += 1
        else:
            rec.labels.append(row)
    if not rec.labels:
        rec.status = "empty"
    return rec


def _files_hash(im_files: list[str], lb_files: list[str], nc: int | None) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION} nc={nc}".encode())
    for f in (*im_files, *lb_files):
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()


def _load_cache(path: Path, key: str) -> list[ImageRecord] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or data.get("hash") != key:
        return None
    return [ImageRecord(**{**r, "shape": tuple(r["shape"])}) for r in data["records"]]


def _save_cache(path: Path, key: str, records: list[ImageRecord]) -> None:
    payload = {"version": CACHE_VERSION, "hash": key, "records": [r.__dict__ for r in records]}
    try:
        atomic_write(path, json.dumps(payload))
    except OSError as e:
        LOGGER.info(f"label cache not written, folder not writeable: {path} ({e.strerror})")


def verify_dataset(
    sources: str | Path | Iterable[str | Path], nc: int | None = None, prefix: str = "", use_cache: bool = True
) -> LabelSet:
    """Verify every image and label of `sources`; log warnings and a one-line summary.

    Raises ValueError naming the sources when no usable image is left.
    """
    srcs = as_source_list(sources)
    im_files = list_image_files(srcs)
    if not im_files:
        raise ValueError(f"{prefix}no images found in {srcs}")
    lb_files = [img2label_path(f) for f in im_files]
    cache_file = label_cache_path(srcs, lb_files)
    key = _files_hash(im_files, lb_files, nc)
    records = _load_cache(cache_file, key) if use_cache else None
    cached = records is not None
    if records is None:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            records = list(pool.map(lambda a: verify_image_label(*a, nc), zip(im_files, lb_files)))
        if use_cache:
            _save_cache(cache_file, key, records)
    for r in records:
        for m in r.messages:
            LOGGER.warning(f"{prefix}{m}")
    counts = {s: sum(r.status == s for r in records) for s in ("found", "missing", "empty", "corrupt")}
    counts["bad_rows"] = sum(r.bad_rows for r in records)
    counts["boxes"] = sum(len(r.labels) for r in records)
    good = [r for r in records if r.status != "corrupt"]
    summary = (
        f"{prefix}{cache_file if cached else srcs}: {len(records)} images, {counts['found']} labelled, "
        f"{counts['missing']} missing labels (background), {counts['empty']} empty, {counts['corrupt']} corrupt, "
        f"{counts['bad_rows']} bad rows, {counts['boxes']} boxes{' (from cache)' if cached else ''}"
    )
    (LOGGER.warning if counts["corrupt"] or counts["bad_rows"] else LOGGER.info)(summary)
    if not good:
        raise ValueError(f"{prefix}no usable image in {srcs} ({counts['corrupt']} corrupt of {len(records)})")
    return LabelSet(
        im_files=[r.im_file for r in good],
        label_files=[r.lb_file for r in good],
        labels=[np.array(r.labels, dtype=np.float32).reshape(-1, 5) for r in good],
        shapes=np.array([r.shape for r in good], dtype=np.int64).reshape(-1, 2),
        counts=counts,
        cache_file=cache_file if use_cache else None,
        rejected=_rejected(records),
    )


def _rejected(records: list[ImageRecord]) -> dict[str, int]:
    """How many rows (or images) were left out, per reason ('wrong column count', 'class id', ...)."""
    out: dict[str, int] = {}
    for r in records:
        for m in r.messages:
            if r.status == "corrupt":
                detail = m.split("corrupt image, ", 1)[-1]
            else:  # 'LABEL_FILE:LINE: reason; row skipped' or 'LABEL_FILE: unreadable label file ...'
                detail = re.sub(r"^:(\d+:)? ", "", m[len(r.lb_file):])
            kind = re.match(r"[a-z][a-z\- ]*", detail)  # 'class id 7 outside [0, 2]' -> 'class id'
            key = (kind.group(0) if kind else detail).strip()
            out[key] = out.get(key, 0) + 1
    return out


def require_boxes(found: "LabelSet | object", sources: Iterable[str | Path] | str, prefix: str = "train: ") -> None:
    """Refuse a training set with no usable box, saying what was rejected and why (background images are fine)."""
    counts, rejected = found.counts, getattr(found, "rejected", {})
    if counts["boxes"]:
        return
    why = ", ".join(f"{n} {k}" for k, n in sorted(rejected.items(), key=lambda kv: -kv[1])) or "no rejected rows"
    raise NoLabelsError(
        f"{prefix}no usable label in {as_source_list(sources)}: {sum(counts[k] for k in ('found', 'missing', 'empty'))}"
        f" images, {counts['missing']} without a label file, {counts['empty']} whose label file has no usable row, "
        f"{counts['corrupt']} corrupt; rejected: {why} (each named in the warnings above). "
        "Labels are found by replacing /images/ with /labels/ and the suffix with .txt")
