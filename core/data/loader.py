"""DataLoader factory: persistent workers, seeded shuffling and augmentation, DDP sampling."""
from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from core.cpu import cpu_cores, lower_priority

from .dataset import YoloDataset


__all__ = ["create_dataloader"]


def seed_worker(worker_id: int, low_priority: bool = False) -> None:
    """Seed numpy, random and the dataset's augmentation RNG of one worker from torch's worker seed;
    with `low_priority`, nice the worker (core/cpu.py: the trainer's threads take every core).

    torch derives the worker seed from the loader's generator, so the same loader seed gives the
    same augmentations; persistent workers keep their streams across epochs.
    """
    if low_priority:
        lower_priority()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "rng"):
        info.dataset.rng = np.random.default_rng(seed)


def create_dataloader(
    sources: str | Path | Iterable[str | Path], imgsz: int, batch_size: int, hyp: Mapping[str, float] | None,
    augment: bool, cache: str | None = None, workers: int = 2, shuffle: bool = False, rank: int = -1,
    world_size: int = 1, seed: int = 0, nc: int | None = None, prefix: str = "", low_priority: bool = False,
) -> tuple[DataLoader, YoloDataset]:
    """Build the dataset of `sources` and a DataLoader over it.

    Batches are `(imgs uint8 (B,3,H,W) RGB, targets (N,6) [img_index, cls, cx, cy, w, h], paths, shapes)`.
    With world_size > 1 a DistributedSampler gives rank its share (call `loader.sampler.set_epoch(e)`
    every epoch to reshuffle). Same seed -> same batches. `low_priority` nices the workers (core/cpu.py).
    """
    ddp = world_size > 1 and rank != -1
    dataset = YoloDataset(
        sources, imgsz=imgsz, hyp=hyp, augment=augment, cache=cache, nc=nc, prefix=prefix,
        seed=seed + max(rank, 0),
    )
    batch_size = min(batch_size, len(dataset))
    per_process = cpu_cores() // max(world_size, 1)
    nw = max(0, min(per_process, batch_size if batch_size > 1 else 0, workers))
    sampler = None
    if ddp:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=nw,
        pin_memory=torch.cuda.is_available(),
        collate_fn=YoloDataset.collate_fn,
        worker_init_fn=partial(seed_worker, low_priority=low_priority),
        generator=generator,
        persistent_workers=nw > 0,
        prefetch_factor=4 if nw > 0 else None,
    )
    return loader, dataset
