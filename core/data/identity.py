"""What a data yaml trains on, as a cheap key: caches that skip work compare it, not the yaml's path or bytes.

`data_identity(data)` digests, for the train and val splits as the loader resolves them:
- the image list (paths relative to the data root, so a moved dataset keeps its identity) with each
  image's size and mtime_ns: a replaced or re-encoded image changes both or at least the mtime;
- each label file's content (sha256; labels are small): an edited label changes the key whatever its
  mtime, and a label added to or removed from a background image too;
- the data yaml's content and, for a generated (`synthetic:`) set, the settings it was generated with
  (its `synthetic.json`).
No image is decoded; the cost is a stat per image and a read per label file. The parts are kept
beside the overall digest so that a changed key can say which part changed (core.digest.describe_change).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from core.digest import sha256_file

from .config import load_data_config
from .files import img2label_path, list_image_files

__all__ = ["data_digest", "data_identity"]

SPLITS = ("train", "val")
GENERATOR_RECORD = "synthetic.json"  # written by core.data.synthetic beside a generated set


def data_identity(data: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """{'digest', 'yaml', 'generator', 'images', 'labels', 'files'} of a data yaml path, a loaded data config
    (core.data.config.load_data_config) or None (the built-in dataset); 'files' counts the images."""
    cfg = data if isinstance(data, Mapping) else load_data_config(data)
    root = Path(cfg["path"])
    images, labels = hashlib.sha256(), hashlib.sha256()
    files = 0
    for split in SPLITS:
        for im_file in list_image_files(cfg[split]) if cfg.get(split) else []:
            rel = os.path.relpath(im_file, root)
            st = os.stat(im_file)
            images.update(f"{split}\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            labels.update(f"{split}\0{rel}\0{sha256_file(img2label_path(im_file)) or '-'}\n".encode())
            files += 1
    generator = root / GENERATOR_RECORD
    parts = {"yaml": sha256_file(cfg.get("yaml_file")),
             "generator": sha256_file(generator) if generator.is_file() else None,
             "images": images.hexdigest(), "labels": labels.hexdigest(), "files": files}
    digest = hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()
    return {"digest": digest, **parts}


def data_digest(data: str | Path | Mapping[str, Any] | None) -> str:
    """data_identity(data)'s overall digest: one hex string."""
    return data_identity(data)["digest"]
