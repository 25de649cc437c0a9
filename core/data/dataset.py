"""YOLO-format detection dataset: verified labels, cached images, training augmentation.

An item is `(img, labels, path, shapes)`:
- img: uint8 tensor (3, H, W) RGB, H = W = imgsz;
- labels: float tensor (n, 6) `[0, cls, cx, cy, w, h]` normalised to img (collate_fn fills column 0
  with the image index in the batch);
- shapes: `((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)))` mapping original pixels to img, or
  None for a mosaic.

Training (augment=True): with probability hyp['mosaic'] a 4-image mosaic on a 2*imgsz canvas warped
back to imgsz, otherwise one letterboxed image warped in place; copy_paste before the warp; mixup
with a second sample built the same way; then HSV, flip up-down, flip left-right. `close_mosaic()`
turns mosaic, mixup and copy-paste off for good, in the loader's running workers too.

The random draws of an item come from its own generator, seeded by (seed, epoch, index): an item is the
same whichever worker builds it and however many workers there are, and a run resumed at epoch E
augments as the uninterrupted run did. `set_epoch(e)` (the loader's sampler calls it as each pass
starts) reaches running workers through shared memory, as `close_mosaic` does.
Validation (augment=False): letterbox to a square imgsz, no augmentation.
"""
from __future__ import annotations

import ctypes
import multiprocessing
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from ..hyp import default_hyp
from . import augment as A
from .cache import CachedImage, load_image, preload_images
from .labels import verify_dataset

__all__ = ["YoloDataset"]

Shapes = tuple[tuple[int, int], tuple[tuple[float, float], tuple[int, int]]] | None


class YoloDataset(Dataset):
    """Images and labels of YOLO-format `sources` (folders, .txt lists, or lists of them)."""

    def __init__(
        self, sources: str | Path | Iterable[str | Path], imgsz: int = 640, hyp: Mapping[str, float] | None = None,
        augment: bool = False, cache: str | None = None, nc: int | None = None, prefix: str = "", seed: int = 0,
    ) -> None:
        if cache not in (None, "ram", "disk"):
            raise ValueError(f"cache must be None, 'ram' or 'disk', got {cache!r}")
        found = verify_dataset(sources, nc=nc, prefix=prefix)
        self.im_files: list[str] = found.im_files
        self.label_files: list[str] = found.label_files
        self.labels: list[np.ndarray] = found.labels  # never modified: items work on copies
        self.shapes: np.ndarray = found.shapes  # (N, 2) original (h, w)
        self.counts = found.counts
        self.rejected = found.rejected  # reason -> rows left out (core.data.labels.require_boxes)
        self.imgsz = int(imgsz)
        self.hyp = {**default_hyp(), **(hyp or {})}
        self.augment = augment
        self.cache = cache
        self.seed = int(seed) % 2**64  # a SeedSequence word (a negative --seed too)
        self.rng = np.random.default_rng(self.seed)  # the draws of the item being built (_item_rng)
        self._epoch = multiprocessing.RawValue(ctypes.c_int64, 0)  # shared with the loader's workers
        # In shared memory, so persistent loader workers (forked or spawned with the dataset) see the switch
        # without being rebuilt: a rebuilt loader forks new workers from a trainer that has grown by then.
        self._mosaic_closed = multiprocessing.RawValue(ctypes.c_bool, False)
        self._closed_hyp = {**self.hyp, "mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0}
        self.ims: list[CachedImage] | None = None
        if cache == "ram":
            self.ims = preload_images(self.im_files, self.imgsz, "ram")

    def __len__(self) -> int:
        return len(self.im_files)

    def close_mosaic(self) -> None:
        """From the next item on: no mosaic, mixup or copy-paste (whole, undistorted images)."""
        self._mosaic_closed.value = True

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations the next items draw (before a pass sends its first index)."""
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def _item_rng(self, index: int) -> np.random.Generator:
        """The item's own random stream: a function of (seed, epoch, index) alone."""
        return np.random.default_rng([self.seed, self._epoch.value, index])

    def set_mosaic(self, probability: float) -> None:
        """The mosaic probability of augmented items (AutoMosaic sets it before the loader's workers start)."""
        self.hyp = {**self.hyp, "mosaic": float(probability)}

    @property
    def mosaic_closed(self) -> bool:
        return bool(self._mosaic_closed.value)

    def _item_hyp(self) -> Mapping[str, float]:
        return self._closed_hyp if self._mosaic_closed.value else self.hyp

    def load_image(self, i: int) -> CachedImage:
        """(BGR image resized so its long side = imgsz, (h0, w0))."""
        if self.ims is not None:
            return self.ims[i]
        return load_image(self.im_files[i], self.imgsz, self.cache)

    def _letterboxed(self, i: int) -> tuple[np.ndarray, np.ndarray, Shapes]:
        img, (h0, w0) = self.load_image(i)
        h, w = img.shape[:2]
        img, (rw, rh), pad = A.letterbox(img, self.imgsz, auto=False, scaleup=self.augment)
        boxes = A.xywhn_to_xyxy(self.labels[i], w * rw, h * rh, *pad)
        shapes = ((h0, w0), ((h * rh / h0, w * rw / w0), pad))
        return img, boxes, shapes

    def _mosaic(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = [i, *self.rng.integers(0, len(self), size=3)]
        images = [self.load_image(k)[0] for k in idx]
        return A.mosaic4(images, [self.labels[k] for k in idx], self.imgsz, self.rng)

    def _augmented(self, i: int) -> tuple[np.ndarray, np.ndarray, Shapes]:
        hyp, s = self._item_hyp(), self.imgsz
        if self.rng.random() < hyp["mosaic"]:
            img, boxes = self._mosaic(i)
            shapes = None
        else:
            img, boxes, shapes = self._letterboxed(i)
        img, boxes = A.copy_paste(img, boxes, hyp["copy_paste"], self.rng)
        img, boxes = A.random_perspective(
            img, boxes, self.rng, degrees=hyp["degrees"], translate=hyp["translate"], scale=hyp["scale"],
            shear=hyp["shear"], perspective=hyp["perspective"], out_shape=(s, s),
        )
        return img, boxes, shapes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, Shapes]:
        hyp = self._item_hyp()
        self.rng = rng = self._item_rng(index)  # _augmented and _mosaic draw from it too
        if self.augment:
            img, boxes, shapes = self._augmented(index)
            if rng.random() < hyp["mixup"]:
                img2, boxes2, _ = self._augmented(int(rng.integers(0, len(self))))
                img, boxes = A.mixup(img, boxes, img2, boxes2, rng)
        else:
            img, boxes, shapes = self._letterboxed(index)
        h, w = img.shape[:2]
        labels = A.xyxy_to_xywhn(boxes, w, h)
        if self.augment:
            img = A.augment_hsv(img, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], rng)
            if rng.random() < hyp["flipud"]:
                img, labels[:, 2] = img[::-1], 1 - labels[:, 2]
            if rng.random() < hyp["fliplr"]:
                img, labels[:, 1] = img[:, ::-1], 1 - labels[:, 1]
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels)
        chw = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(chw), out, self.im_files[index], shapes

    @staticmethod
    def collate_fn(batch: list[tuple[Any, ...]]) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
        """Stack images; concatenate labels with column 0 = image index in the batch."""
        imgs, labels, paths, shapes = zip(*batch)
        for i, lb in enumerate(labels):
            lb[:, 0] = i
        return torch.stack(imgs, 0), torch.cat(labels, 0), paths, shapes
