"""Image decoding and the two image caches.

- RAM: decoded images resized so the long side = imgsz, held in one process-wide store keyed by
  (file path, mtime_ns, imgsz). A second dataset over the same files in the same process (an
  evolution trial after another) reuses them without decoding. Stored arrays are read-only.
- disk: the full-resolution decoded image as a `.npy` beside the image file, reused while it
  is newer than the image.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

CachedImage = tuple[np.ndarray, tuple[int, int]]  # (resized BGR image, (h0, w0))
_RAM_STORE: dict[tuple[str, int, int], CachedImage] = {}


def decode_image(path: str) -> np.ndarray:
    """Decode an image file to a BGR uint8 array (H, W, 3)."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"image not found or not decodable: {path}")
    return img


def _npy_path(path: str) -> Path:
    return Path(path).with_suffix(".npy")


def read_image(path: str, disk_cache: bool = False) -> np.ndarray:
    """Full-resolution BGR image; with `disk_cache` through a .npy file beside it."""
    if not disk_cache:
        return decode_image(path)
    npy = _npy_path(path)
    try:
        if npy.stat().st_mtime_ns >= os.stat(path).st_mtime_ns:
            return np.load(npy, allow_pickle=False)
    except (OSError, ValueError):
        pass  # missing, stale or damaged: decode again
    img = decode_image(path)
    tmp = npy.with_name(f"{npy.stem}.{os.getpid()}.tmp.npy")
    try:
        np.save(tmp, img, allow_pickle=False)
        os.replace(tmp, npy)
    except OSError:
        tmp.unlink(missing_ok=True)  # read-only dataset: work without the disk cache
    return img


def resize_long_side(img: np.ndarray, imgsz: int) -> np.ndarray:
    """Resize so the long side equals imgsz, keeping the aspect ratio."""
    h0, w0 = img.shape[:2]
    r = imgsz / max(h0, w0)
    if r == 1:
        return img
    w, h = min(max(round(w0 * r), 1), imgsz), min(max(round(h0 * r), 1), imgsz)
    interp = cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA
    return cv2.resize(img, (w, h), interpolation=interp)


def load_image(path: str, imgsz: int, cache: str | None = None) -> CachedImage:
    """(BGR image resized to long side imgsz, (h0, w0)), through the cache named by `cache`."""
    if cache == "ram":
        key = (path, os.stat(path).st_mtime_ns, imgsz)
        hit = _RAM_STORE.get(key)
        if hit is not None:
            return hit
    img0 = read_image(path, disk_cache=cache == "disk")
    img = resize_long_side(img0, imgsz)
    item = (img, (img0.shape[0], img0.shape[1]))
    if cache == "ram":
        img.flags.writeable = False  # shared between datasets: never modified in place
        _RAM_STORE[key] = item
    return item


def preload_images(paths: list[str], imgsz: int, cache: str, threads: int = 4) -> list[CachedImage]:
    """Load every image through `cache` (filling the RAM store), using a few threads."""
    with ThreadPoolExecutor(max_workers=max(1, min(threads, os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda p: load_image(p, imgsz, cache), paths))


def ram_cache_size() -> tuple[int, int]:
    """(number of images, bytes) held in the process-wide RAM store."""
    return len(_RAM_STORE), sum(v[0].nbytes for v in _RAM_STORE.values())


def clear_ram_cache() -> None:
    """Forget every image in the process-wide RAM store."""
    _RAM_STORE.clear()
