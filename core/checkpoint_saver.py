"""The files of a training run: results.csv, best.pt, last.pt and resume.pt, and when each is written.

While training, last.pt holds the full state (optimizer included) after every epoch, and best.pt is
written before last.pt, so whenever last.pt has epoch N, best.pt covers epochs <= N. Every write is
atomic. At a normal end or on a signal both are stripped (EMA weights, FP16, no optimizer); a signal
first copies a full last.pt to resume.pt (a resumed run stopped before it saved an epoch keeps the resume.pt
it started from). After a crash nothing is stripped: last.pt resumes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
import yaml
from torch import nn

from core.atomic import atomic_write, remove_stale_temps
from core.checkpoint import save_checkpoint, strip_checkpoint
from core.run_dir import holds_full_state, read_history, write_results

LOGGER = logging.getLogger(__name__)


class CheckpointSaver:
    """Owns one run folder's files. `enabled` False (no saving, or a DDP rank other than 0) writes nothing."""

    def __init__(self, save_dir: Path, enabled: bool, hyp: Mapping, train_opts: Mapping):
        self.save_dir = Path(save_dir)
        self.enabled = enabled
        self.hyp = dict(hyp)
        self.train_opts = dict(train_opts)
        self.best_path = self.save_dir / "best.pt"
        self.last_path = self.save_dir / "last.pt"
        self.resume_path = self.save_dir / "resume.pt"
        self.results = self.save_dir / "results.csv"

    def start(self, resumed: bool) -> None:
        """Create the folder and write hyp.yaml and opt.yaml; a new run in a reused folder starts a new table.
        Clears temp files of writes a kill cut short (a run killed before its first epoch saved starts anew)."""
        if not self.enabled:
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.save_dir)
        if not resumed:
            self.results.unlink(missing_ok=True)
        atomic_write(self.save_dir / "hyp.yaml", yaml.safe_dump(self.hyp, sort_keys=False))
        atomic_write(self.save_dir / "opt.yaml", yaml.safe_dump(
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.train_opts.items()}, sort_keys=False))

    def resumed_history(self, start_epoch: int, saved: list[dict] | None = None) -> list[dict]:
        """The rows of the epochs before `start_epoch`: the checkpoint's exact ones (`saved`), else results.csv's
        (6 digits); later rows (written before a kill could save the checkpoint) are dropped from results.csv,
        their epochs run again."""
        rows = [dict(h) for h in saved] if saved is not None else read_history(self.results)
        history = [h for h in rows if h["epoch"] < start_epoch]
        if self.enabled:
            write_results(self.results, history)
        return history

    def save_epoch(self, model: nn.Module, ema, optimizer: torch.optim.Optimizer, history: list[dict],
                   improved: bool, best_fitness: float, train_state: Mapping | None = None) -> None:
        """results.csv, then best.pt (when improved), then the full last.pt (with `train_state`, what resumes
        the run exactly); a stale resume.pt goes."""
        if not self.enabled:
            return
        write_results(self.results, history)
        common = dict(ema=ema.ema, updates=ema.updates, hyp=self.hyp, metrics=history[-1], epoch=history[-1]["epoch"],
                      best_fitness=best_fitness, train_opts=self.train_opts)
        if improved:
            save_checkpoint(self.best_path, model, **common)
        save_checkpoint(self.last_path, model, optimizer=optimizer, train_state=train_state, **common)
        self.resume_path.unlink(missing_ok=True)  # last.pt now holds a newer full state

    def finish(self, ended: bool, interrupted: bool) -> None:
        """Strip at a normal end or on a signal (keeping the full state in resume.pt on a signal);
        after a crash leave last.pt full and say how to resume."""
        if not self.enabled:
            return
        if ended or interrupted:
            # only a full last.pt is newer than resume.pt: a resumed run interrupted before it saved an epoch
            # has the stripped one of the first interrupt, and resume.pt is still the state to keep
            if interrupted and holds_full_state(self.last_path):
                atomic_write(self.resume_path, self.last_path.read_bytes())
            for path in (self.best_path, self.last_path):  # last.pt last: killed in between, it still resumes
                if path.exists():
                    strip_checkpoint(path)
            if ended:
                self.resume_path.unlink(missing_ok=True)  # a finished run has nothing left to resume
        elif self.last_path.exists():
            LOGGER.error(f"training failed: {self.last_path} keeps the full state of the last finished epoch; "
                      f"resuming {self.save_dir} (--resume, TrainOptions.resume) continues from it")
