"""Device selection and distributed (torchrun) context."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import torch


__all__ = ["DeviceError", "parse_device_ids", "select_device", "BF16_MODES", "cpu_bf16_native", "resolve_bf16",
           "bf16_autocast", "train_forward"]


class DeviceError(ValueError):
    """The requested device cannot be used."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a torchrun launch (rank -1 = not distributed)."""

    rank: int = -1
    local_rank: int = -1
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_context() -> DistContext:
    """Read torchrun's environment variables."""
    return DistContext(
        rank=int(os.environ.get("RANK", -1)),
        local_rank=int(os.environ.get("LOCAL_RANK", -1)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def parse_device_ids(device: str | int | None) -> list[int] | None:
    """'cpu' -> None; '0' -> [0]; '0,1' -> [0, 1]. Raises DeviceError on anything else."""
    text = str(device if device is not None else "cpu").strip().lower().replace("cuda:", "")
    if text in ("", "cpu"):
        return None
    try:
        ids = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise DeviceError(f"invalid --device '{device}': use 'cpu', '0' or '0,1,...'") from None
    if not ids or any(i < 0 for i in ids):
        raise DeviceError(f"invalid --device '{device}': use 'cpu', '0' or '0,1,...'")
    return ids


def select_device(device: str | int | None = "cpu", batch_size: int = 0,
                  ctx: DistContext | None = None) -> torch.device:
    """Validate the device string and return the torch.device this process trains on.

    Several GPU ids mean one DDP training launched by torchrun (one process per id); the
    batch must divide evenly among them.
    """
    ctx = ctx or dist_context()
    ids = parse_device_ids(device)
    if ids is None:
        if ctx.distributed and batch_size % ctx.world_size:
            raise DeviceError(f"--batch-size {batch_size} is not divisible by WORLD_SIZE {ctx.world_size}")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device} requested but CUDA is not available on this machine; use --device cpu")
    count = torch.cuda.device_count()
    missing = [i for i in ids if i >= count]
    if missing:
        raise DeviceError(f"--device {device}: CUDA device(s) {missing} not found ({count} visible)")
    if len(ids) > 1:
        if batch_size % len(ids):
            raise DeviceError(f"--batch-size {batch_size} is not divisible by the {len(ids)} devices in --device {device}")
        if not ctx.distributed:
            raise DeviceError(f"--device {device} lists {len(ids)} GPUs: launch one process per GPU with "
                              f"`torchrun --nproc_per_node {len(ids)} -m core.train --device {device} ...`")
    if ctx.distributed:
        if ctx.world_size != len(ids):
            raise DeviceError(f"--device {device} lists {len(ids)} GPUs but WORLD_SIZE is {ctx.world_size}")
        gpu = ids[ctx.local_rank]
    else:
        gpu = ids[0]
    torch.cuda.set_device(gpu)
    return torch.device("cuda", gpu)


BF16_MODES = ("auto", "on", "off")


def cpu_bf16_native() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 in hardware (AMX-BF16 or AVX512-BF16), and why, in words."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    native = [k for k in ("amx_bf16", "avx512_bf16") if caps.get(k)]
    if native:
        return True, f"this CPU has {' and '.join(native)}"
    return False, "this CPU has neither amx_bf16 nor avx512_bf16, so bf16 would be emulated (slower than fp32)"


def resolve_bf16(mode: str, device: torch.device) -> tuple[bool, str]:
    """CPU bf16 autocast for `mode` (auto: where the CPU has it in hardware; on; off), and the reason."""
    if mode not in BF16_MODES:
        raise DeviceError(f"--bf16 {mode!r}: choose one of {', '.join(BF16_MODES)}")
    if device.type != "cpu":
        return False, "bf16 autocast is a CPU option (CUDA trains in fp16 AMP)"
    if mode == "off":
        return False, "--bf16 off"
    native, why = cpu_bf16_native()
    if mode == "on":
        return True, f"--bf16 on ({why})"
    return native, f"--bf16 auto: {why}"


def bf16_autocast(enabled: bool = True) -> torch.autocast:
    """CPU bfloat16 autocast (a no-op context when not `enabled`)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def compile_for_training(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile (inductor) of the training model, static shapes (a different last batch compiles once more).
    The wrapper only runs the training steps: the bare model, its EMA and checkpoints stay eager and plain.
    On CPU inductor builds C++ kernels, so a compiler must be on PATH: say so before a step fails."""
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        raise DeviceError("--compile on CPU needs a C++ compiler (torch.compile's inductor writes C++ kernels): "
                          "install g++ (e.g. apt-get install g++) or set CXX, or train without --compile")
    return torch.compile(model, dynamic=False)


def train_forward(model: torch.nn.Module, imgs: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    """The network's training outputs: under CPU bf16 autocast when `bf16`, handed back in fp32, because the
    loss sums need more than bf16's 8 mantissa bits. One place for `core.train` and the benchmarks."""
    if not bf16:
        return model(imgs)
    with bf16_autocast():
        return [p.float() for p in model(imgs)]

