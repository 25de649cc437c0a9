"""The cost objective of one trial: its model's batch-1 CPU latency or GFLOPs at the image size it trained at.

Latency is measured on the trial's own trained model (fused, eval mode, PyTorch, `LATENCY_THREADS` thread,
`LATENCY_RUNS` timed runs after 3 untimed): its median is the objective, p25 and p75 are recorded beside it
so the report can show how much the host's load moved it. Workers training beside the measurement load the
same cores, so on a busy host latency differs between trials of one image size by the load alone; GFLOPs
(thop) do not move with load and cost nothing to repeat: `objectives: [fitness, gflops]` where that matters.
"""
from __future__ import annotations

import math
from pathlib import Path
import torch.nn as nn

from core.checkpoint import model_from_checkpoint
from core.model.info import model_gflops
from core.model.yolo import Model

__all__ = ["LATENCY_RUNS", "LATENCY_THREADS", "measure_cost", "trial_model"]

LATENCY_THREADS = 1   # one core: the comparison between trials does not hang on how many cores were free
LATENCY_RUNS = 20


def trial_model(result_model: nn.Module | None, weights: str | Path | None, model_yaml: str | Path) -> nn.Module:
    """The model a trial trained (FitResult.model), else the checkpoint it started from, else the yaml's model
    (an injected fit that builds none: the architecture, all the cost depends on, is the same)."""
    if result_model is not None:
        return result_model
    if weights:
        return model_from_checkpoint(weights)
    return Model(str(model_yaml)).eval()


def measure_cost(name: str, model: nn.Module, imgsz: int) -> dict[str, float]:
    """{latency_ms, latency_p25, latency_p75} or {gflops} of `model` at `imgsz` (errors say what is missing)."""
    if name == "gflops":
        g = model_gflops(model, imgsz)
        if not math.isfinite(g):
            raise RuntimeError("objective gflops needs the thop package (pip install ultralytics-thop)")
        return {"gflops": g}
    if name == "latency_ms":
        from prune.measure import model_latency  # the study imports prune where used (evolve/study.py's note)
        lat = model_latency(model, imgsz, threads=LATENCY_THREADS, runs=LATENCY_RUNS)
        return {"latency_ms": lat.median, "latency_p25": lat.p25, "latency_p75": lat.p75}
    raise ValueError(f"unknown cost objective {name!r} (latency_ms or gflops)")
