"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half.

The data goes to a temp file in the same folder (so the rename never crosses a file system), then
`os.replace`s the target. A failed or interrupted write removes its temp; on a full disk the error names
the file (the previous one is kept). No fsync: this guards
against a killed process (the page cache outlives it), not a power cut, and costs nothing per epoch.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Callable, IO


__all__ = ["DISK_FULL", "atomic_write", "process_alive", "remove_orphaned_temps", "remove_stale_temps"]

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, quota exceeded


def atomic_write(path: str | Path, data: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write `data` (text, bytes, or a function that writes to a binary file object) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers never share one
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException as e:  # KeyboardInterrupt included: never leave a temp file behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in DISK_FULL:  # the message of a failed write names no file
            raise OSError(e.errno, f"{e.strerror}: cannot write {path} (the previous {path.name} is kept, "
                                   f"unchanged)", str(path)) from e
        raise
    return path


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files that writes killed mid-way (SIGKILL, power loss) left in `folder`."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # atomic_write's temp: .NAME.PID.tmp


def remove_orphaned_temps(folder: str | Path) -> list[Path]:
    """Delete the temps under `folder` (recursively) whose writer is no longer running (killed mid-write): safe
    beside live writers, unlike remove_stale_temps, so a command may call it on a folder other processes write."""
    gone = []
    for p in Path(folder).rglob(".*.tmp"):
        m = _TEMP.match(p.name)
        if m and p.is_file() and not process_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def process_alive(pid: int) -> bool:
    """Is process `pid` running in this PID space? A killed child its parent has not reaped yet (a zombie) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux) or it went away meanwhile: alive as far as we know
        return True
    return True
