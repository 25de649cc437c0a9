"""Content keys: a file's sha256, so caches and records follow what a file holds, not where it lies;
the code's version, so a cache made by other code is not taken for this code's; and a one-line account
of what differs between two keys, so a rerun that redoes work says why.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["code_version", "describe_change", "sha256_file"]

PACKAGE = "yolo-evolve-prune"
CODE_VERSION_ENV = "YEP_CODE_VERSION"
REPO = Path(__file__).resolve().parents[1]
MAX_CHANGES = 4  # parts named in one describe_change line
ABSENT = object()  # a key one of two compared mappings does not have


def sha256_file(path: str | Path | None) -> str | None:
    """sha256 hex digest of a file's bytes; None when there is no such file."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The package version, plus `+g<commit>` when the code runs from a git checkout: '0.1.0+g1b6611b6e2a0'.

    Read once per process (the code a process runs does not change under it). Uncommitted edits are left
    out on purpose: a dirty flag would be one key for every edit (it could not tell two apart) and a hash of
    the diff would redo hours of training after a comment is fixed; while editing, --force redoes what an
    edit may change. Commit, and the next run redoes every cached run. $YEP_CODE_VERSION, when set, is
    taken instead: the tests pin it for a session (a commit made meanwhile in the same tree changes nothing),
    and a user may pin it to keep caches across a commit known to change no result.
    """
    return os.environ.get(CODE_VERSION_ENV) or _package_and_commit()


@functools.lru_cache(maxsize=None)
def _package_and_commit() -> str:
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    if not (REPO / ".git").exists():
        return version
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return version
    commit = out.stdout.strip()
    return f"{version}+g{commit}" if out.returncode == 0 and commit else version


def describe_change(old: Any, new: Any) -> str | None:
    """What differs between two cache keys (plain json values), in one line; None when they are equal.

    Nested mappings are named by dotted paths ('channel.optimizer changed 'auto' -> 'SGD''); a mapping
    with a 'digest' (core.data.identity) by its parts that changed ('data changed (labels)'); lists of
    equal length item by item, each different change said once.
    """
    if old == new:
        return None
    changes: list[str] = []
    for line in _changes("", old, new):
        if line not in changes:
            changes.append(line)
    more = len(changes) - MAX_CHANGES
    return ", ".join(changes[:MAX_CHANGES]) + (f" and {more} more" if more > 0 else "")


def _changes(path: str, old: Any, new: Any) -> list[str]:
    name = path or "key"
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        if "digest" in old and "digest" in new:
            parts = [k for k in new if k != "digest" and old.get(k) != new.get(k)]
            return [f"{name} changed ({', '.join(parts) or 'digest'})"]
        out: list[str] = []
        for key in [*new, *(k for k in old if k not in new)]:
            out += _changes(f"{path}.{key}" if path else str(key), old.get(key, ABSENT), new.get(key, ABSENT))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for a, b in zip(old, new) for line in _changes(path, a, b)]
    return [f"{name} changed {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
