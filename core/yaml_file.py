"""Read one yaml file with errors that name the file, the line and the column (every yaml we read)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


__all__ = ["YamlFileError", "load_yaml"]


class YamlFileError(ValueError):
    """A yaml file is missing, not valid YAML, or does not hold what the caller expects."""


def load_yaml(path: str | Path, kind: str = "yaml file", expect: type | None = dict,
              error: type[Exception] = YamlFileError) -> Any:
    """The content of `path`; an empty file is {} when a mapping is expected.

    kind: what the file is for the user ('hyp file', 'data yaml'), used in the messages.
    expect: the type the top level must have (None = anything).
    error: the exception raised (callers keep their own type, e.g. HypError, StudyError).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read {kind} ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{where}: {kind} is not valid YAML: {problem}") from None
    if data is None and expect is dict:
        return {}
    if expect is not None and not isinstance(data, expect):
        raise error(f"{path}: {kind} must hold a {_kind_of(expect)}, got {_kind_of(type(data))}")
    return data


def _kind_of(t: type) -> str:
    return {dict: "mapping (key: value lines)", list: "list", str: "string"}.get(t, t.__name__)
