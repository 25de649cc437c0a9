"""Read a YOLOv5/ultralytics data yaml (`path`, `train`, `val`, `test`, `names`, `nc`).

`path` relative -> against the yaml's folder, else the current directory (so a coco128.yaml with
`path: ../datasets/coco128` works from where it always worked). No `path` -> the yaml's folder.
Paths are made absolute as given, symlinks not followed (`..` is taken lexically): labels are found beside
the images path the yaml names, so a folder of labels beside a symlinked images/ is the one read.
train/val/test: a source or a list of sources (folders, .txt list files, images), relative to
`path`. `names`: a list, or a dict {index: name} with indexes 0..nc-1. A `synthetic:` section
(seed, n_train, n_val, imgsz, min_size, max_size, max_objects) generates the built-in dataset under
`path` when it is missing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.yaml_file import load_yaml

from .synthetic import generate_shapes

__all__ = ["DEFAULT_DATA", "DataConfigError", "load_data_config"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT / "studies" / "data" / "shapes.yaml"
SYNTHETIC_KEYS = {"seed", "n_train", "n_val", "n_test", "imgsz", "min_size", "max_size", "max_objects"}


class DataConfigError(ValueError):
    """A data yaml is missing a key, names something that does not exist, or is inconsistent."""


def _names(raw: dict[str, Any], where: str) -> list[str]:
    names = raw.get("names")
    nc = raw.get("nc")
    if names is None:
        if nc is None:
            raise DataConfigError(f"{where}: key 'names' is missing (a list of class names or {{index: name}})")
        names = [f"class{i}" for i in range(int(nc))]
    if isinstance(names, dict):
        try:
            idx = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            msg = f"{where}: 'names' dict keys must be class indexes 0..n-1, got {list(names)}"
            raise DataConfigError(msg) from None
        if idx != list(range(len(idx))):
            raise DataConfigError(f"{where}: 'names' dict keys must be 0..{len(idx) - 1} without gaps, got {idx}")
        names = [names[k] if k in names else names[str(k)] for k in idx]
    if not isinstance(names, list) or not names:
        raise DataConfigError(f"{where}: 'names' must be a non-empty list or dict, got {names!r}")
    names = [str(n) for n in names]
    if nc is not None and int(nc) != len(names):
        raise DataConfigError(f"{where}: nc={nc} but 'names' has {len(names)} entries")
    return names


def _absolute(path: Path) -> Path:
    """`path` absolute and normalised without following symlinks (Path.resolve would follow them)."""
    return Path(os.path.abspath(path))


def _root(raw: dict[str, Any], yaml_file: Path) -> Path:
    given = raw.get("path")
    if not given:
        return yaml_file.parent
    p = Path(str(given)).expanduser()
    if p.is_absolute():
        return p
    beside = _absolute(yaml_file.parent / p)
    if beside.exists() or raw.get("synthetic"):
        return beside
    in_cwd = _absolute(p)
    return in_cwd if in_cwd.exists() else beside


def _sources(raw: dict[str, Any], key: str, root: Path, where: str, required: bool) -> list[str]:
    value = raw.get(key)
    if value in (None, "", []):
        if required:
            raise DataConfigError(f"{where}: key '{key}' is missing (a folder, .txt list file, or list of them)")
        return []
    out = []
    for item in value if isinstance(value, list) else [value]:
        p = Path(str(item)).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.exists():
            hint = " ('download' is not supported: fetch the dataset yourself)" if raw.get("download") else ""
            raise DataConfigError(f"{where}: '{key}' source not found: {p}{hint}")
        out.append(str(_absolute(p)))
    return out


def load_data_config(path: str | Path | None = None) -> dict[str, Any]:
    """Parse and check a data yaml; None -> the built-in synthetic dataset (generated on first use).

    Returns {'yaml_file', 'path', 'train', 'val', 'test', 'names', 'nc'} with absolute sources.
    Raises FileNotFoundError for a missing yaml and DataConfigError naming the yaml and the key.
    """
    yaml_file = _absolute(Path(path).expanduser()) if path is not None else DEFAULT_DATA
    if not yaml_file.is_file():
        raise FileNotFoundError(f"data yaml not found: {yaml_file}")
    where = str(yaml_file)
    raw = load_yaml(yaml_file, "data yaml (keys path/train/val/names)", error=DataConfigError)
    names = _names(raw, where)
    root = _root(raw, yaml_file)
    synth = raw.get("synthetic")
    if synth:
        if not isinstance(synth, dict) or set(synth) - SYNTHETIC_KEYS:
            raise DataConfigError(f"{where}: 'synthetic' must be a mapping with keys {sorted(SYNTHETIC_KEYS)}")
        generate_shapes(root, names, **{k: int(v) for k, v in synth.items()})
    return {
        "yaml_file": str(yaml_file),
        "path": str(root),
        "train": _sources(raw, "train", root, where, required=True),
        "val": _sources(raw, "val", root, where, required=True),
        "test": _sources(raw, "test", root, where, required=False),
        "names": names,
        "nc": len(names),
    }
