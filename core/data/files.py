"""Image sources -> image files, image file -> label file, the YOLO way.

A source is a folder of images (searched recursively), a .txt list file (one image path a
line; relative lines are taken relative to the list file's folder, './x' included), a single
image file, or a list of those. Labels live where the last `/images/` of the image path is
replaced by `/labels/` and the suffix by `.txt`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

__all__ = ["IMG_FORMATS", "img2label_path", "list_image_files"]

CACHE_SUFFIX = ".yep.cache"  # label verification cache (labels.py)
IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")


def as_source_list(sources: str | Path | Iterable[str | Path]) -> list[str]:
    """Normalise one source or a list of them to a list of strings."""
    if isinstance(sources, (str, Path)):
        return [str(sources)]
    return [str(s) for s in sources]


def is_image(path: str | Path) -> bool:
    return str(path).rsplit(".", 1)[-1].lower() in IMG_FORMATS


def _read_list_file(list_file: Path) -> list[str]:
    files = []
    parent = list_file.parent
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        p = Path(line)
        files.append(str(p if p.is_absolute() else (parent / p)))
    return files


def list_image_files(sources: str | Path | Iterable[str | Path]) -> list[str]:
    """All image files named by `sources`, absolute, sorted, without duplicates.

    Raises FileNotFoundError naming a source that does not exist.
    """
    found: list[str] = []
    for src in as_source_list(sources):
        p = Path(src).expanduser()
        if p.is_dir():
            found += [str(f) for f in p.rglob("*") if f.is_file() and is_image(f)]
        elif p.is_file() and p.suffix.lower() == ".txt":
            found += [f for f in _read_list_file(p) if is_image(f)]
        elif p.is_file() and is_image(p):
            found.append(str(p))
        else:
            raise FileNotFoundError(f"image source not found (folder, .txt list or image): {src}")
    return sorted({os.path.abspath(f) for f in found})


def img2label_path(im_file: str) -> str:
    """Label file of an image: last `/images/` -> `/labels/`, suffix -> `.txt`."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = im_file.rpartition(sa)
    joined = f"{head}{sb}{tail}" if sep else im_file
    return joined.rsplit(".", 1)[0] + ".txt"


def label_cache_path(sources: str | Path | Iterable[str | Path], label_files: list[str]) -> Path:
    """Where the verification cache of these sources lives.

    Beside the list file when the first source is a file (`train.txt` -> `train.yep.cache`),
    otherwise beside the labels folder of the first image (`labels/train` -> `labels/train.yep.cache`).
    Our own suffix: YOLOv5 and ultralytics write `train.cache` in a format of theirs in the same place.
    """
    first = Path(as_source_list(sources)[0])
    if first.is_file():
        return first.with_suffix(CACHE_SUFFIX)
    return Path(label_files[0]).parent.with_suffix(CACHE_SUFFIX)
