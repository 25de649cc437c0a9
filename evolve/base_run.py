"""The study's base run: the base hyp trained once on the study's data; every trial finetunes from its best.pt.

A from-scratch trial of a few epochs on a CPU barely leaves the first steps of learning, so its
fitness is mostly seed noise. Starting every trial from one trained checkpoint (YOLOv5's documented
evolve scenario: finetuning for a few epochs) makes a trial's budget measure what its hyp does to a
model that already detects. The run is cached: it is redone only when its inputs change (hyp, options,
the data's identity: images, labels, yaml and generator settings, the model file, the code version), and
the log says which changed.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from core.atomic import atomic_write
from core.cpu import cpu_cores
from core.data.identity import data_identity
from core.digest import code_version, describe_change, sha256_file
from core.hyp import load_hyp
from core.train import fit as train_fit
from evolve.study_config import StudyConfig
from evolve.train_setup import BASE_DIR, base_weights_path, search_train_options

__all__ = ["base_record", "base_run_change", "cached_base_run", "ensure_base_run"]

LOGGER = logging.getLogger(__name__)

RECORD = "run.json"


def base_run_hyp(cfg: StudyConfig, base_hyp: Mapping[str, float]) -> dict[str, float]:
    """The base run's hyp: `base: hyp:` (a from-scratch recipe) or else the study's base hyp."""
    if cfg.base.get("hyp"):
        return load_hyp(cfg.resolved_path(cfg.base["hyp"]))
    return dict(base_hyp)


def base_inputs(cfg: StudyConfig, base_hyp: Mapping[str, float]) -> dict[str, Any]:
    """Everything that changes what the base run produces (files by content, not path), as plain json."""
    return json.loads(json.dumps({
        "hyp": {k: float(v) for k, v in base_run_hyp(cfg, base_hyp).items()},
        "base": {k: v for k, v in cfg.base.items() if k != "hyp"}, "seed": cfg.seed,
        "imgsz": cfg.imgsz, "batch": cfg.batch, "train": dict(cfg.train),
        "data": data_identity(cfg.resolved("data")), "model_sha256": sha256_file(cfg.resolved("model")),
        "fitness_weights": list(cfg.fitness_weights), "code_version": code_version(),
        "workers": loader_workers()}))  # each loader process draws its own augmentation stream


def loader_workers() -> int:
    """The base run is the only run at this point: every core. One loader process augments while the other cores
    compute (on 2 cores: 7 s/epoch instead of 12 s with loading in the training process)."""
    return 1 if cpu_cores() > 1 else 0


def base_record(evolve_dir: Path | str) -> dict[str, Any] | None:
    path = Path(evolve_dir) / BASE_DIR / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def base_run_change(cfg: StudyConfig, base_hyp: Mapping[str, float], evolve_dir: Path | str) -> str | None:
    """Why the base run here cannot be reused, in a few words; None when it can."""
    return _change(base_record(evolve_dir), base_inputs(cfg, base_hyp), base_weights_path(evolve_dir))


def _change(old: dict[str, Any] | None, inputs: dict[str, Any], weights: Path) -> str | None:
    if old is None or not weights.is_file():
        return "no finished base run here"
    return describe_change(old.get("inputs"), inputs)


def cached_base_run(cfg: StudyConfig, base_hyp: Mapping[str, float], evolve_dir: Path | str) -> Path | None:
    """The base run's best.pt if a finished run with the study's inputs is here, else None."""
    return None if base_run_change(cfg, base_hyp, evolve_dir) else base_weights_path(evolve_dir)


def ensure_base_run(cfg: StudyConfig, base_hyp: Mapping[str, float], evolve_dir: Path | str, device: str,
                    fit: Callable[..., Any] | None = None, log: Callable[[str], None] = LOGGER.info) -> Path | None:
    """Train the base run unless a finished one with the same inputs exists; return its best.pt (None: no base)."""
    if not cfg.base:
        return None
    weights = base_weights_path(evolve_dir)
    out = weights.parent
    inputs = base_inputs(cfg, base_hyp)
    old = base_record(evolve_dir)
    change = _change(old, inputs, weights)
    if change is None:
        log(f"base run: reusing {weights} (fitness {old['fitness']:.4f}, same inputs)")
        return weights
    if old:
        log(f"base run: redoing, {change}")
    fit = fit or train_fit
    epochs = int(cfg.base["epochs"])
    close = int(cfg.base.get("close_mosaic", 0))
    log(f"base run: the base hyp for {epochs} epochs (close-mosaic {close}) -> {out}; trials finetune from it")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    cores, loader = cpu_cores(), loader_workers()
    opts = search_train_options(cfg, epochs=epochs, seed=cfg.seed, device=device, project=out.parent, name=out.name,
                                save=True, close_mosaic=close, progress=True, workers=loader,
                                threads=max(1, cores - loader))
    result = fit(cfg.resolved("data"), cfg.resolved("model"), base_run_hyp(cfg, base_hyp), opts)
    if result.best_path is None or not Path(result.best_path).is_file():
        raise RuntimeError(f"base run: training saved no best.pt (stop reason: {result.stop_reason})")
    best = dict(result.best or {})
    record = {"inputs": inputs, "fitness": float(best.get("fitness", float("nan"))),
              "mAP50-95": float(best.get("mAP50-95", float("nan"))), "best_epoch": int(best.get("epoch", -1)),
              "seconds": round(time.time() - t0, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write(out / RECORD, json.dumps(record, indent=1))  # written last: a run cut short is redone
    log(f"base run: fitness {record['fitness']:.4f} (mAP50-95 {record['mAP50-95']:.4f}) at epoch "
        f"{record['best_epoch']}, {record['seconds']:.0f} s")
    return weights
