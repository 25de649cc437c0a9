"""The files of one training run folder: where it goes, its results.csv, and what --resume picks."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import torch

from core.atomic import atomic_write

__all__ = ["RESULT_COLUMNS", "read_history"]

RESULT_COLUMNS = ["epoch", "train_box", "train_obj", "train_cls", "P", "R", "mAP50", "mAP50-95", "fitness",
                  "val_box", "val_obj", "val_cls", "lr", "seconds", "train_seconds", "val_seconds"]


def next_run_dir(project: str, name: str, exist_ok: bool) -> Path:
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (Path(project) / f"{name}{n}").exists():
        n += 1
    return Path(project) / f"{name}{n}"


def resolve_resume(resume: bool | str, project: str) -> Path:
    """Find the full-state checkpoint to resume from: `resume` True = the newest run under `project` (by its
    newest checkpoint file), else the run folder or checkpoint given. In a run folder: resume.pt (written on
    interrupt, beside a stripped last.pt), unless last.pt holds a full state: then last.pt is at least as new
    (killed after saving an epoch but before deleting resume.pt, or in the cleanup before the strip)."""
    if resume is True:
        runs = {p.parent for name in ("resume.pt", "last.pt") for p in Path(project).glob(f"*/{name}")}
        if not runs:
            raise FileNotFoundError(f"--resume: no resume.pt or last.pt found under {project}/")
        path = _resume_file(max(runs, key=_last_saved))
    else:
        path = Path(resume)
        if path.is_dir():
            path = _resume_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} not found")
    return path


def _resume_file(run: Path) -> Path:
    resume = run / "resume.pt"
    return resume if resume.exists() and not holds_full_state(run / "last.pt") else run / "last.pt"


def _last_saved(run: Path) -> float:
    return max(p.stat().st_mtime for p in (run / "resume.pt", run / "last.pt") if p.exists())


def holds_full_state(path: Path) -> bool:
    """True when `path` is a checkpoint with optimizer state (a run can resume from it); False for a stripped,
    unreadable or missing one. Memory-mapped: the tensors are not read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: not a state to resume
        return False
    return isinstance(ckpt, dict) and ckpt.get("optimizer") is not None


def write_results(path: Path, history: list[dict]) -> None:
    """The whole table, rewritten atomically each epoch: a run killed mid-write keeps the previous table."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, out.getvalue())


def read_history(path: Path) -> list[dict]:
    """A run's results.csv as per-epoch metric dicts (empty cells left out); [] when there is none yet."""
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
