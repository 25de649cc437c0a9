"""How evolution trains: one policy for the trials, the noise seeds, the base run and the retrains.

Every run of a study trains the same way, only its hyp, seed, epochs and output folder differ:
the study's optimizer (`train: optimizer`, default SGD: lr0 and momentum are searched genes and mean
what they say for it), no close-mosaic (mosaic and mixup are searched genes), one loader process and
the RAM cache, and the checkpoint the trials start from (`weights:` or the study's base run).

AutoMosaic (core.data.automosaic) scales the hyp's mosaic probability by a factor read from the data and
the hyp's geometry genes (degrees, translate, scale, shear, perspective). Inside a study that factor is
fixed once, from the base hyp (`study_mosaic_factor`): trials and retrains train with AutoMosaic off and
mosaic = gene x factor, recorded as `mosaic_used`. Per trial, the factor would move with the other
searched genes (degrees 30 + translate 0.5 scale mosaic by 0.73 on the built-in set at 160 px), so the
mosaic gene would not mean one thing across trials, and evolve.csv would record a probability no trial used.
`train: {automosaic: false}` turns it off for the whole study (factor 1).
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch

from core.data.automosaic import check_mosaic
from core.data.config import load_data_config
from core.data.dataset import YoloDataset
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
                                optimizer="SGD", close_mosaic=0,
                                # this process's threads (the worker's or retrain slot's), pinned: auto threads follow
                                # the machine's load, and a thread count changes float sums, so a rerun or a resume of
                                # the same run would not give the same numbers
                                threads=torch.get_num_threads())
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


def study_mosaic_factor(cfg: StudyConfig, base_hyp: Mapping[str, float], data: Any) -> float:
    """AutoMosaic's factor of the study's base hyp on its training labels (1 with `train: {automosaic: false}`).
    `data`: a data yaml path or a loaded data config. The simulation's seed is fixed: every worker, machine
    and retrain computes the same factor."""
    if not cfg.train.get("automosaic", True):
        return 1.0
    data_cfg = data if isinstance(data, Mapping) else load_data_config(data)
    labels = YoloDataset(data_cfg["train"], imgsz=cfg.imgsz, nc=int(data_cfg["nc"]))  # labels and sizes, no pixels
    return check_mosaic(labels.labels, labels.shapes, cfg.imgsz, base_hyp).factor


def with_study_mosaic(hyp: Mapping[str, float], factor: float) -> dict[str, float]:
    """The hyp a study run trains with: the mosaic gene times the study's AutoMosaic factor."""
    return {**hyp, "mosaic": float(hyp["mosaic"]) * float(factor)}
