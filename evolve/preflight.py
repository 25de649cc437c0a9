"""Checks before a study is touched: what would fail every trial fails once, here, with its message.

A missing GPU, an unreadable data yaml, a model yaml that does not build or a start checkpoint that
does not load would otherwise fail every trial in milliseconds, each recorded as a finished trial,
and leave a study full of failures behind. These raise StudyError (exit 2) before the storage is opened.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

from core.checkpoint import load_checkpoint, model_from_checkpoint
from core.data.config import load_data_config
from core.model.yolo import Model, is_anchor_free
from evolve.space import Space, check_base, check_head
from evolve.study_config import StudyConfig, StudyError


def visible_gpu_ids(gpus: str) -> list[str]:
    """The physical ids for the study's GPU list: ids index into an existing CUDA_VISIBLE_DEVICES mask
    (SLURM and friends set one), so `--gpus 0,1` under a mask '4,6' means GPUs 4 and 6."""
    ids = [s for s in str(gpus).split(",") if s]
    mask = [s.strip() for s in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if s.strip()]
    if not mask or "CUDA_VISIBLE_DEVICES" not in os.environ:
        return ids
    bad = [i for i in ids if int(i) >= len(mask)]
    if bad:
        raise StudyError(f"--gpus {gpus}: id(s) {', '.join(bad)} outside CUDA_VISIBLE_DEVICES={','.join(mask)} "
                         f"({len(mask)} visible GPU(s): use ids 0..{len(mask) - 1})")
    return [mask[int(i)] for i in ids]


def check_gpus(gpus: str) -> None:
    """`--gpus 0,1,...` needs CUDA and that many visible devices."""
    if gpus == "cpu":
        return
    ids = [int(s) for s in str(gpus).split(",") if s]
    if not torch.cuda.is_available():
        raise StudyError(f"--gpus {gpus}: CUDA is not available on this machine (torch {torch.__version__}, "
                         f"{'a CPU build' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda}); "
                         f"use --gpus cpu --workers N")
    n = torch.cuda.device_count()
    bad = [i for i in ids if i >= n]
    if bad:
        raise StudyError(f"--gpus {gpus}: GPU id(s) {', '.join(map(str, bad))} not present ({n} visible: 0..{n - 1})")


def preflight(cfg: StudyConfig, space: Space, base_hyp: Mapping[str, float]) -> None:
    """Devices, data, model and start weights: each loads once, or the study stops here."""
    check_base(space, base_hyp, cfg.hyp or "base hyp (studies/hyp/scratch.yaml)")
    check_gpus(cfg.gpus)
    try:
        data = load_data_config(cfg.resolved("data"))
    except (OSError, ValueError) as e:
        raise StudyError(f"study '{cfg.name}': data: {e}") from None
    try:
        model = Model(cfg.resolved("model"), nc=int(data["nc"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StudyError(f"study '{cfg.name}': model {cfg.resolved('model')}: {type(e).__name__}: {e}") from None
    where = f"study '{cfg.name}': {cfg.space or 'the space file (studies/space.yaml)'}"
    check_head(space, is_anchor_free(model), where)  # genes the model's loss never reads are refused
    if cfg.weights or cfg.base:
        gene = space.get("anchors")
        if gene is not None and gene.evolved:
            raise StudyError(f"study '{cfg.name}': trials start from weights, so 'anchors' (the Detect head's shape) "
                             f"cannot be searched: set its gain to 0 in {cfg.space or 'the space file'}")
    if cfg.weights:
        try:
            model_from_checkpoint(load_checkpoint(cfg.resolved("weights")))
        except Exception as e:  # any reason the file cannot become a model
            raise StudyError(f"study '{cfg.name}': weights {cfg.resolved('weights')}: {type(e).__name__}: {e}") from None
