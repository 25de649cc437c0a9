"""Cost of a model: parameters, GFLOPs at a fixed image size, fused CPU latency (PyTorch, and onnxruntime for
an exported file), checkpoint size, channels."""
from __future__ import annotations

import copy
import functools
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from core.export import export_onnx
from core.model.info import model_info
from prune.graph import trace


__all__ = ["Latency", "cpu_latency", "cpu_latency_ms", "interleaved_latency", "latency_backend",
           "measure", "model_latency", "ort_session", "prunable_channels", "subnormal_count", "zero_subnormals"]


def prunable_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every prunable conv, by name."""
    return {name: m.conv.out_channels for name, m in trace(model).convs.items()}


@dataclass(frozen=True)
class Latency:
    """Spread of one model's timed runs (ms): the median and the quartiles p25, p75 of its interleaved rounds."""
    median: float
    p25: float
    p75: float
    runs: int

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        ms = sorted(1000.0 * t for t in seconds)
        if len(ms) == 1:
            return cls(ms[0], ms[0], ms[0], 1)
        p25, p50, p75 = statistics.quantiles(ms, n=4, method="inclusive")
        return cls(p50, p25, p75, len(ms))

    def text(self, fmt: str = "{:.2f}") -> str:
        """'14.92 (14.80-15.10)': median (p25-p75)."""
        return f"{fmt.format(self.median)} ({fmt.format(self.p25)}-{fmt.format(self.p75)})"


def subnormal_count(model: nn.Module) -> int:
    """Floating-point values in the model's parameters and buffers with 0 < |x| < the dtype's smallest normal."""
    return sum(int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())
               for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())


@torch.no_grad()
def zero_subnormals(model: nn.Module) -> int:
    """Set every subnormal parameter or buffer value to zero (in place); returns how many there were.

    A subnormal weight (0 < |w| < 1.18e-38 in float32) adds nothing measurable to any output, but x86 CPUs
    that take a microcode assist on subnormal operands (many Intel cores; runtimes leave FTZ/DAZ off by
    default) run every multiply reading it slower. The AMD EPYC of bench/results/latency_trust.md showed no
    such cost; the pipeline zeroes them in every saved stage so no deployment target pays for them."""
    n = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            tiny = (t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)
            n += int(tiny.sum())
            t[tiny] = 0
    return n


def interleaved_latency(calls: dict[str, Callable[[], object]], warmup: int, runs: int) -> dict[str, Latency]:
    """Latency spread of each call, the calls timed interleaved (one of each per round, repeated), so a change
    in machine load during the measurement affects them all alike and the ratios stay fair. The first `warmup`
    rounds are not timed. The order is shuffled every round (seeded): in a fixed cyclic order the model that
    always ran right after an onnxruntime call read 5-10% slower than an exact copy of itself elsewhere in the
    loop. Subnormal floats are not flushed: the runtimes' default, as the model will run."""
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
    return {name: Latency.of(t) for name, t in times.items()}


def ort_session(path: str | Path, threads: int):
    """An onnxruntime CPU session with the same thread budget as torch.set_num_threads(threads)."""
    import onnxruntime as ort  # optional package (the `export` extra): only the onnxruntime latency needs it

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def cpu_latency(models: dict[str, nn.Module], imgsz: int, threads: int = 1, warmup: int = 3,
                runs: int = 30, onnx: dict[str, str | Path] | None = None) -> dict[str, Latency]:
    """Batch-1 latency spread (ms) of each fused model in eval mode on CPU with a fixed thread count.

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
        return interleaved_latency(calls, warmup, runs)
    finally:
        torch.set_num_threads(before)


def cpu_latency_ms(models: dict[str, nn.Module], imgsz: int, threads: int = 1, warmup: int = 3,
                   runs: int = 30, onnx: dict[str, str | Path] | None = None) -> dict[str, float]:
    """The medians of cpu_latency (ms), for callers that need one number per model."""
    return {name: lat.median for name, lat in cpu_latency(models, imgsz, threads, warmup, runs, onnx).items()}


def latency_backend(choice: str) -> str:
    """'onnxruntime' or 'torch' for a --latency-backend choice; auto = onnxruntime where onnx and onnxruntime import."""
    if choice != "auto":
        return choice
    try:
        import onnx  # noqa: F401  optional packages (the `export` extra)
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


def model_latency(model: nn.Module, imgsz: int, threads: int = 1, runs: int = 30, backend: str = "torch",
                  onnx_path: str | Path | None = None) -> Latency:
    """One model's batch-1 latency spread on CPU: PyTorch fused, or onnxruntime on the model exported to
    `onnx_path` (overwritten)."""
    if backend == "torch":
        return cpu_latency({"m": model}, imgsz, threads, runs=runs)["m"]
    if backend != "onnxruntime" or onnx_path is None:
        raise ValueError(f"latency backend {backend!r}: 'torch', or 'onnxruntime' with a path to export to")
    path = export_onnx(model, onnx_path, imgsz=imgsz)
    return cpu_latency({}, imgsz, threads, runs=runs, onnx={"m": path})["m"]


def paired_latency(model: nn.Module, reference: nn.Module, imgsz: int, threads: int = 1, runs: int = 30,
                   backend: str = "torch", onnx_dir: str | Path | None = None) -> tuple[Latency, Latency]:
    """`model`'s and `reference`'s batch-1 latency spreads from one interleaved loop (PyTorch fused, or onnxruntime
    on both exported into `onnx_dir`): their ratio holds while the machine's load drifts, which one model timed
    alone, then another, does not."""
    if backend == "torch":
        lat = cpu_latency({"model": model, "reference": reference}, imgsz, threads, runs=runs)
    elif backend == "onnxruntime" and onnx_dir is not None:
        files = {k: export_onnx(m, Path(onnx_dir) / f"paired_{k}.onnx", imgsz=imgsz)
                 for k, m in (("model", model), ("reference", reference))}
        lat = cpu_latency({}, imgsz, threads, runs=runs, onnx=files)
    else:
        raise ValueError(f"latency backend {backend!r}: 'torch', or 'onnxruntime' with a folder to export to")
    return lat["model"], lat["reference"]


def measure(model: nn.Module, imgsz: int, ckpt: str | Path | None = None) -> dict:
    """`{'params', 'GFLOPs', 'ckpt_MB', 'channels'}` of one model (latency: see cpu_latency_ms)."""
    info = model_info(model, imgsz)
    return {
        "params": int(info["params"]),
        "GFLOPs": float(info["gflops"]),
        "ckpt_MB": os.path.getsize(ckpt) / 1e6 if ckpt and Path(ckpt).is_file() else float("nan"),
        "channels": sum(prunable_channels(model).values()),
    }
