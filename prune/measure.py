"""Cost of a model: parameters, GFLOPs at a fixed image size, fused CPU latency, checkpoint size, channels."""
from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from prune.graph import trace


def prunable_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every prunable conv, by name."""
    return {name: m.conv.out_channels for name, m in trace(model).convs.items()}


@torch.no_grad()
def cpu_latency_ms(models: dict[str, nn.Module], imgsz: int, threads: int = 1, warmup: int = 3,
                   runs: int = 30) -> dict[str, float]:
    """Median batch-1 latency (ms) of each fused model in eval mode on CPU with a fixed thread count.

    The models are timed interleaved (one forward of each, repeated), so a change in machine load
    during the measurement affects them all alike and the ratios stay fair.
    """
    fused = {}
    for name, model in models.items():
        m = copy.deepcopy(model).float().cpu().eval()
        fused[name] = m.fuse() if hasattr(m, "fuse") else m
    ch = {name: int(getattr(m, "arch", {}).get("ch", 3)) for name, m in fused.items()}
    x = {c: torch.rand(1, c, imgsz, imgsz) for c in set(ch.values())}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {name: [] for name in fused}
    try:
        for r in range(warmup + runs):
            for name, m in fused.items():
                t = time.perf_counter()
                m(x[ch[name]])
                if r >= warmup:
                    times[name].append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return {name: 1000.0 * statistics.median(t) for name, t in times.items()}


def measure(model: nn.Module, imgsz: int, ckpt: str | Path | None = None) -> dict:
    """`{'params', 'GFLOPs', 'ckpt_MB', 'channels'}` of one model (latency: see cpu_latency_ms)."""
    from core.model.info import model_info

    info = model_info(model, imgsz)
    return {
        "params": int(info["params"]),
        "GFLOPs": float(info["gflops"]),
        "ckpt_MB": os.path.getsize(ckpt) / 1e6 if ckpt and Path(ckpt).is_file() else float("nan"),
        "channels": sum(prunable_channels(model).values()),
    }
