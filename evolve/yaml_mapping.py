"""Read a yaml file that must hold a mapping, with errors that name the file (study and space files)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_mapping(path: str | Path, error: type[Exception], kind: str, expected: str) -> dict[str, Any]:
    """The mapping in `path`; `error(f"{kind} not found: ...")` or `error(f"{path}: expected {expected}")` otherwise."""
    if not Path(path).is_file():
        raise error(f"{kind} not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected {expected}")
    return data
