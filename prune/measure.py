"""Cost of a model: parameters, GFLOPs at a fixed image size, fused CPU latency (PyTorch, and onnxruntime for
an exported file), checkpoint size, channels."""
from __future__ import annotations

import copy
import functools
import os
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from core.model.info import model_info
from prune.graph import trace


__all__ = ["cpu_latency_ms", "measure", "prunable_channels"]


def prunable_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every prunable conv, by name."""
    return {name: m.conv.out_channels for name, m in trace(model).convs.items()}


def _interleaved_ms(calls: dict[str, Callable[[], object]], warmup: int, runs: int) -> dict[str, float]:
    """Median wall time (ms) of each call, the calls timed interleaved (one of each, repeated), so a change
    in machine load during the measurement affects them all alike and the ratios stay fair. The order is
    shuffled every round (seeded): in a fixed cyclic order the model that always ran right after an
    onnxruntime call read 5-10% slower than an exact copy of itself elsewhere in the loop."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = random.Random(0)
    names = list(calls)
    for r in range(warmup + runs):
        order.shuffle(names)
        for name in names:
            t = time.perf_counter()
            calls[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: 1000.0 * statistics.median(t) for name, t in times.items()}


def ort_session(path: str | Path, threads: int):
    """An onnxruntime CPU session with the same thread budget as torch.set_num_threads(threads)."""
    import onnxruntime as ort  # optional package (the `export` extra): only the onnxruntime latency needs it

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def cpu_latency_ms(models: dict[str, nn.Module], imgsz: int, threads: int = 1, warmup: int = 3,
                   runs: int = 30, onnx: dict[str, str | Path] | None = None) -> dict[str, float]:
    """Median batch-1 latency (ms) of each fused model in eval mode on CPU with a fixed thread count.

    `onnx` maps more names to exported .onnx files (batch 1, imgsz; fp32 or fp16): they are run through
    onnxruntime with the same number of threads, in the same interleaved loop as the PyTorch models.
    """
    fused = {}
    for name, model in models.items():
        m = copy.deepcopy(model).float().cpu().eval()
        fused[name] = m.fuse() if hasattr(m, "fuse") else m
    ch = {name: int(getattr(m, "arch", {}).get("ch", 3)) for name, m in fused.items()}
    x = {c: torch.rand(1, c, imgsz, imgsz) for c in set(ch.values())}
    calls: dict[str, Callable[[], object]] = {name: functools.partial(m, x[ch[name]]) for name, m in fused.items()}
    for name, path in (onnx or {}).items():
        session = ort_session(path, threads)
        inp = session.get_inputs()[0]
        feed = {inp.name: torch.rand(*inp.shape).numpy().astype("float16" if "float16" in inp.type else "float32")}
        calls[name] = functools.partial(session.run, None, feed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _interleaved_ms(calls, warmup, runs)
    finally:
        torch.set_num_threads(before)


def measure(model: nn.Module, imgsz: int, ckpt: str | Path | None = None) -> dict:
    """`{'params', 'GFLOPs', 'ckpt_MB', 'channels'}` of one model (latency: see cpu_latency_ms)."""
    info = model_info(model, imgsz)
    return {
        "params": int(info["params"]),
        "GFLOPs": float(info["gflops"]),
        "ckpt_MB": os.path.getsize(ckpt) / 1e6 if ckpt and Path(ckpt).is_file() else float("nan"),
        "channels": sum(prunable_channels(model).values()),
    }
