"""DataLoader factory: persistent workers, seeded shuffling and augmentation, DDP sampling.

Every pass has an epoch number: the training order is a permutation drawn from (seed, epoch) and each
item's augmentation from (seed, epoch, index) (YoloDataset), so a pass is a function of its epoch alone:
the same with any number of workers, and a resumed run continues exactly. `loader.sampler.set_epoch(e)`
picks the epoch of the next pass (a shuffling loader otherwise counts its passes from 0)."""
from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from core.cpu import cpu_cores, lower_priority

from .dataset import YoloDataset


__all__ = ["create_dataloader"]


class EpochShuffle(Sampler[int]):
    """The shuffled order of one process's training pass: a permutation drawn from (seed, epoch) alone.

    `set_epoch(e)` sets the next pass's epoch (the trainer calls it before each); each pass then counts on.
    A pass tells its epoch to the dataset as it starts (before its first index goes to a worker), so the
    items' augmentations follow the same epoch."""

    def __init__(self, dataset: YoloDataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed) % 2**64, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        self.dataset.set_epoch(epoch)
        return iter(np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)).tolist())


class DistributedEpochs(DistributedSampler):
    """DistributedSampler whose set_epoch also sets the dataset's augmentation epoch."""

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)


def seed_worker(worker_id: int, low_priority: bool = False) -> None:
    """Seed numpy and random of one worker from torch's worker seed (the dataset's augmentations have their
    own per-item streams); with `low_priority`, nice the worker (core/cpu.py: the trainer's threads take
    every core)."""
    if low_priority:
        lower_priority()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def create_dataloader(
    sources: str | Path | Iterable[str | Path], imgsz: int, batch_size: int, hyp: Mapping[str, float] | None,
    augment: bool, cache: str | None = None, workers: int = 2, shuffle: bool = False, rank: int = -1,
    world_size: int = 1, seed: int = 0, nc: int | None = None, prefix: str = "", low_priority: bool = False,
) -> tuple[DataLoader, YoloDataset]:
    """Build the dataset of `sources` and a DataLoader over it.

    Batches are `(imgs uint8 (B,3,H,W) RGB, targets (N,6) [img_index, cls, cx, cy, w, h], paths, shapes)`.
    With world_size > 1 a DistributedSampler gives rank its share (call `loader.sampler.set_epoch(e)`
    every epoch to reshuffle); shuffle alone, EpochShuffle. Same seed and epoch -> same batches.
    `low_priority` nices the workers (core/cpu.py).
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
        sampler = DistributedEpochs(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    elif shuffle:
        sampler = EpochShuffle(dataset, seed)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
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
