"""How evolution trains: one policy for the trials, the noise seeds, the base run and the retrains.

Every run of a study trains the same way, only its hyp, seed, epochs and output folder differ:
the study's optimizer (`train: optimizer`, default SGD: lr0 and momentum are searched genes and mean
what they say for it), no close-mosaic (mosaic and mixup are searched genes), one loader process and
the RAM cache, and the checkpoint the trials start from (`weights:` or the study's base run).
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from core.train import TrainOptions
from evolve.study_config import StudyConfig, StudyError

BASE_DIR = "base"  # runs/evolve/NAME/base/: the base hyp trained once, when the study has a `base:` section


def search_train_options(cfg: StudyConfig, *, epochs: int, seed: int, device: str, project: Path | str, name: str,
                         save: bool, **overrides: Any) -> Any:
    """core.train.TrainOptions for one run of the study (trial, noise seed, base run or retrain)."""
    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(cfg.train) - known)
    if unknown:
        raise StudyError(f"study '{cfg.name}': unknown train option(s) {unknown} (TrainOptions fields: "
                         f"{', '.join(sorted(known))})")
    opts: dict[str, Any] = dict(epochs=epochs, batch_size=cfg.batch, imgsz=cfg.imgsz, device=device, workers=0,
                                cache="ram", seed=seed, project=str(project), name=name, exist_ok=True, save=save,
                                fitness_weights=tuple(cfg.fitness_weights), progress=False, patience=0,
                                optimizer="SGD", close_mosaic=0)
    opts.update(cfg.train)
    opts.update(overrides)
    return TrainOptions(**opts)


def base_weights_path(evolve_dir: Path | str) -> Path:
    return Path(evolve_dir) / BASE_DIR / "best.pt"


def start_weights(cfg: StudyConfig, evolve_dir: Path | str) -> str | None:
    """The checkpoint every trial finetunes from: `weights:`, the base run's best.pt, or None (from scratch)."""
    if cfg.weights:
        return cfg.resolved("weights")
    if cfg.base:
        return str(base_weights_path(evolve_dir))
    return None
