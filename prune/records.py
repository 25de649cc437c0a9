"""Stage records: a plain checkpoint per stage plus a small json of the options that produced it.

A stage is reused only when its checkpoint and json exist, the recorded options (its own and every
earlier stage's) equal the current ones, and the checkpoint's sha256 equals the one the json
recorded. Files in the options (model yaml, weights) are keyed by content, not path; the data by its
identity (images, labels, yaml, generator settings: core.data.identity); the code by its version.
Before a stage runs its json is removed; the json is written last, atomically (temp + os.replace),
so an interrupted run never leaves new weights beside old options. Once a stage re-runs, all later
stages re-run; side stages (keep_size, unstructured) are rows beside the chain: their models are
not passed on and they do not invalidate later stages.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.atomic import atomic_write
from core.digest import describe_change
from core.digest import sha256_file as file_digest

__all__ = ["COLUMNS", "SIDE_STAGES", "STAGES"]

STAGES = ("baseline", "sparse", "keep_size", "unstructured", "channel", "layer", "finetune")
SIDE_STAGES = ("keep_size", "unstructured")
NO_RECORD = "no finished record"  # StageRecord.change's reason when the stage never finished here
COLUMNS = ["stage", "P", "R", "mAP50", "mAP50-95", "fitness", "params", "GFLOPs", "imgsz", "latency_ms",
           "latency_p25_ms", "latency_p75_ms", "onnx_latency_ms", "onnx_latency_p25_ms", "onnx_latency_p75_ms",
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
        """The stored record if it was produced by exactly these options and names this checkpoint, else None."""
        return None if self.change(options) else self.load()

    def change(self, options: dict) -> str | None:
        """Why the stage cannot be reused, in a few words ('channel.optimizer changed ...'); None: it can."""
        rec = self.load()
        if rec is None:
            return NO_RECORD
        why = describe_change(rec.get("options"), _plain(options))
        if why is None and rec.get("ckpt_sha256") != file_digest(self.ckpt):
            return f"{self.ckpt.name} is not the checkpoint its record names"
        return why

    def invalidate(self) -> None:
        """Drop the json before the stage runs: a crash then leaves no record to reuse."""
        self.meta.unlink(missing_ok=True)

    def write(self, options: dict, row: dict, extra: dict | None = None) -> None:
        """Record the finished stage (its checkpoint is already written), atomically."""
        rec = {"stage": self.stage, "options": _plain(options), "ckpt_sha256": file_digest(self.ckpt),
               "row": _plain(row), "extra": _plain(extra or {})}
        atomic_write(self.meta, json.dumps(rec, indent=1))


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


def write_results(run_dir: Path, rows: list[dict]) -> Path:
    """prune_results.csv: one row per stage, in stage order."""
    df = pd.DataFrame(rows)
    df = df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]
    return atomic_write(run_dir / "prune_results.csv", df.to_csv(index=False))
