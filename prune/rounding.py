"""`--round-to auto`: the channel multiple the machine's conv kernels work in.

A layer cut to a count between two kernel blocks costs as much as the next full block, so kept
channels are rounded up to the block: CPU oneDNN convs work on 16 floats with AVX-512 and on 8
with AVX2 (4 with SSE only); CUDA tensor cores want multiples of 8 (fp16/bf16).
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["CPU_BLOCK", "auto_round_to", "cpu_isa", "resolve_round_to"]

CPU_BLOCK = {"avx512": 16, "avx2": 8, "sse": 4}


def cpu_isa() -> str:
    """'avx512', 'avx2' or 'sse': torch's dispatch capability, else the kernel's CPU flags."""
    cap = torch.backends.cpu.get_cpu_capability().lower()  # 'AVX512', 'AVX2', 'DEFAULT', ...
    if cap.startswith("avx512"):
        return "avx512"
    if cap.startswith("avx2"):
        return "avx2"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"


def auto_round_to(device: str) -> tuple[int, str]:
    """(multiple, reason) for the latency device: '0'/'cuda...' -> tensor cores, else the CPU's SIMD width."""
    if device not in ("cpu", "") and torch.cuda.is_available():
        return 8, "CUDA device: tensor cores work on channel multiples of 8"
    isa = cpu_isa()
    return CPU_BLOCK[isa], f"CPU {isa.upper()}: conv kernels work in blocks of {CPU_BLOCK[isa]} floats"


def resolve_round_to(value: str | int, device: str) -> tuple[int, str]:
    """An explicit multiple passes through; 'auto' asks the machine."""
    if str(value).lower() == "auto":
        return auto_round_to(device)
    return int(value), "given"
