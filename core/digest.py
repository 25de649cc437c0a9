"""Content keys: a file's sha256, so caches and records follow what a file holds, not where it lies."""
from __future__ import annotations

import hashlib
from pathlib import Path


__all__ = ["sha256_file"]


def sha256_file(path: str | Path | None) -> str | None:
    """sha256 hex digest of a file's bytes; None when there is no such file."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
