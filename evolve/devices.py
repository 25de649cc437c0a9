"""Where independent runs go: the one scheduling policy for evolution workers and retrain runs.

A slot is one process's place: on CPU, `workers` slots sharing the cores; on GPUs, `workers_per_gpu`
slots per listed GPU (small models at small image sizes leave a big GPU mostly idle, so two or three
trials per GPU raise throughput; memory is the limit). A GPU slot's process sees only its GPU
(CUDA_VISIBLE_DEVICES = the physical id), so it trains on device '0' and records 'cuda:<id>'.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core.cpu import cpu_cores
from evolve.preflight import visible_gpu_ids
from evolve.study_config import StudyConfig


@dataclass(frozen=True)
class Slot:
    device: str                 # what fit gets in the slot's process: 'cpu' or '0'
    label: str                  # what the records say: 'cpu' or 'cuda:<physical id>'
    threads: int                # torch / OpenCV threads of the slot's process
    env: dict = field(default_factory=dict)  # set before the process starts (or before it touches CUDA)


def device_slots(cfg: StudyConfig, threads: int | None = None) -> list[Slot]:
    """One slot per parallel process, cores split evenly between them unless `threads` is given."""
    if cfg.gpus == "cpu":
        n = max(1, cfg.workers)
        return [Slot("cpu", "cpu", threads or max(1, cpu_cores() // n)) for _ in range(n)]
    ids = [i for i in visible_gpu_ids(cfg.gpus) for _ in range(max(1, cfg.workers_per_gpu))]
    per = threads or max(1, cpu_cores() // len(ids))
    return [Slot("0", f"cuda:{i}", per, {"CUDA_VISIBLE_DEVICES": i}) for i in ids]
