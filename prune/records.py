"""Stage records: a plain checkpoint per stage plus a small json of the options that produced it.

Both are written atomically (the json after its checkpoint), so a run killed at any moment leaves
either a complete record or none: the stage is then re-run.

A stage is reused only when its checkpoint and json exist and the recorded options (its own and
every earlier stage's) equal the current ones; once a stage re-runs, all later stages re-run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.atomic import atomic_write

STAGES = ("baseline", "sparse", "channel", "layer", "finetune")
COLUMNS = ["stage", "P", "R", "mAP50", "mAP50-95", "fitness", "params", "GFLOPs", "imgsz", "latency_ms",
           "latency_imgsz", "threads", "ckpt_MB", "channels_kept", "channels_pruned", "prune_ratio"]


@dataclass
class StageRecord:
    stage: str
    run_dir: Path

    @property
    def ckpt(self) -> Path:
        return self.run_dir / f"{self.stage}.pt"

    @property
    def meta(self) -> Path:
        return self.run_dir / f"{self.stage}.json"

    def load(self) -> dict | None:
        if not (self.ckpt.is_file() and self.meta.is_file()):
            return None
        try:
            return json.loads(self.meta.read_text())
        except json.JSONDecodeError:
            return None

    def reusable(self, options: dict) -> dict | None:
        """The stored record if it was produced by exactly these options, else None."""
        rec = self.load()
        return rec if rec is not None and rec.get("options") == _plain(options) else None

    def write(self, options: dict, row: dict, extra: dict | None = None) -> None:
        rec = {"stage": self.stage, "options": _plain(options), "row": _plain(row), "extra": _plain(extra or {})}
        atomic_write(self.meta, json.dumps(rec, indent=1))


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


def write_results(run_dir: Path, rows: list[dict]) -> Path:
    """prune_results.csv: one row per stage, in stage order."""
    df = pd.DataFrame(rows)
    df = df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]
    return atomic_write(run_dir / "prune_results.csv", df.to_csv(index=False))
