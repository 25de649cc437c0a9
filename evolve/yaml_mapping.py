"""Read a yaml file that must hold a mapping, with errors that name the file (study and space files)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.yaml_file import load_yaml


def read_mapping(path: str | Path, error: type[Exception], kind: str, expected: str) -> dict[str, Any]:
    """The mapping in `path`; otherwise `error` naming the file (and line and column for a YAML syntax error)."""
    return load_yaml(path, f"{kind} ({expected})", error=error)
