"""AutoMosaic: before training, what a mosaic does to this dataset's objects, and how often to use it.

A mosaic tiles four training images around a random centre of a 2s x 2s canvas and the warp keeps
the central s x s, so each image shows about a quarter of itself. Small objects survive whole; an
object that fills half of its image is mostly cut away, yet its label is kept down to a tenth of its
box (augment.box_candidates), so the network is asked to name classes from slivers. On few large
objects that stalls classification until close-mosaic switches mosaic off (README, "Diagnosis on
large"); on many small objects mosaic is what makes the most of each image.

The check simulates the training augmentation on the labels alone (no pixels), with the hyp's
scale, translate, degrees, shear and perspective: over many mosaics it counts the labels kept whose
box shows less than half of the object's whole box (fragments). Their share f of the labels kept
sets the mosaic probability (like AutoAnchor, a default that reads the data, not a flag):

    mosaic = hyp mosaic x clip((F_OFF - f) / (F_OFF - F_ON), 0, 1)

F_ON is f of the built-in shapes set (studies/data/shapes.yaml), on which mosaic 1.0 was chosen;
F_OFF is f of the large-object development set (studies/data/shapes-large.yaml), on which training
without mosaic measured better (README). In between the probability falls linearly: an interpolation
between two measured points, not a measurement. Neither set is in the held-out suite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from . import augment as A

__all__ = ["MosaicCheck", "apply_automosaic", "check_mosaic"]

FRAGMENT = 0.5   # a kept label whose box shows less than this share of the object's box is a fragment
F_ON = 0.21      # fragment share of studies/data/shapes.yaml (default hyp; 0.193-0.202), rounded up past
                 # its simulation spread so the built-in set keeps its mosaic: full mosaic
F_OFF = 0.45     # fragment share of studies/data/shapes-large.yaml (default hyp; 0.441-0.467): no mosaic
SAMPLES = 2000   # simulated mosaics (about 2 s): the share varies by about +-0.01 between seeds


@dataclass(frozen=True)
class MosaicCheck:
    fragment_share: float  # of the labels a mosaic keeps, the share showing < FRAGMENT of their object
    labels_kept: int       # labels the simulation kept (the share's denominator)
    factor: float          # what the hyp's mosaic probability is multiplied by
    mosaic: float          # the probability used

    def message(self, hyp_mosaic: float) -> str:
        share = f"{self.fragment_share:.0%} of the labels a mosaic keeps show less than half of their object"
        if self.factor >= 1.0:
            return f"AutoMosaic: {share}: mosaic {hyp_mosaic:g} kept"
        return (f"AutoMosaic: {share} (full mosaic at <= {F_ON:.0%}, none at >= {F_OFF:.0%}): "
                f"mosaic {hyp_mosaic:g} -> {self.mosaic:.2f} (--no-automosaic keeps the hyp's)")


def mosaic_factor(fragment_share: float) -> float:
    """The multiplier of the hyp's mosaic probability for a fragment share (1 below F_ON, 0 above F_OFF)."""
    return float(np.clip((F_OFF - fragment_share) / (F_OFF - F_ON), 0.0, 1.0))


def _tile_sizes(shapes_hw: np.ndarray, imgsz: int) -> np.ndarray:
    """(N, 2) (h, w) of each image as the loader tiles it: resized so its long side is imgsz."""
    shapes_hw = np.asarray(shapes_hw, dtype=np.float64).reshape(-1, 2)
    r = imgsz / shapes_hw.max(1, keepdims=True)
    return np.maximum(np.round(shapes_hw * r), 1).astype(int)


def _area(xyxy: np.ndarray) -> np.ndarray:
    return (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])


def fragment_share(labels: Sequence[np.ndarray], shapes_hw: np.ndarray, imgsz: int, hyp: Mapping[str, float],
                   samples: int = SAMPLES, seed: int = 0) -> tuple[float, int]:
    """(share of fragments among the labels kept, labels kept) over `samples` simulated mosaics.

    Each mosaic follows YoloDataset._augmented: four random images tiled by augment.mosaic_tile, boxes
    clipped to the canvas, then random_perspective's warp to imgsz x imgsz with the hyp's ranges, boxes
    clipped and filtered by box_candidates. A label's visible share is its final box's area over the
    area of the same object's box warped without any clipping."""
    rng = np.random.default_rng(seed)
    sizes = _tile_sizes(shapes_hw, imgsz)
    labelled = [i for i, lb in enumerate(labels) if len(lb)]
    if not labelled:
        return 0.0, 0
    s = int(imgsz)
    fragments = kept = 0
    for _ in range(samples):
        xc, yc = (int(rng.uniform(s / 2, 3 * s / 2)) for _ in range(2))
        whole = []
        for k, i in enumerate(rng.choice(labelled, size=4)):
            h, w = sizes[i]
            (x1a, y1a, _, _), (x1b, y1b) = A.mosaic_tile(k, w, h, xc, yc, s)
            whole.append(A.xywhn_to_xyxy(np.asarray(labels[i], dtype=np.float64).reshape(-1, 5), w, h,
                                         x1a - x1b, y1a - y1b)[:, 1:])
        whole = np.concatenate(whole, 0)
        on_canvas = whole.clip(0, 2 * s)
        M, scale = A.random_perspective_matrix(
            (2 * s, 2 * s), (s, s), rng, hyp["degrees"], hyp["translate"], hyp["scale"], hyp["shear"],
            hyp["perspective"])
        full = A.transform_boxes(whole, M)
        seen = A.transform_boxes(on_canvas, M).clip(0, s)
        keep = A.box_candidates(on_canvas * scale, seen)
        visible = _area(seen[keep]) / np.maximum(_area(full[keep]), 1e-9)
        fragments += int((visible < FRAGMENT).sum())
        kept += int(keep.sum())
    return (fragments / kept if kept else 0.0), kept


def check_mosaic(labels: Sequence[np.ndarray], shapes_hw: np.ndarray, imgsz: int, hyp: Mapping[str, float],
                 seed: int = 0) -> MosaicCheck:
    """The mosaic probability to train with (hyp['mosaic'] scaled down where mosaics cut objects to pieces).

    The simulation's seed is fixed, not the training's: the probability is a property of the data and
    hyp, the same for every seed of a comparison."""
    share, kept = fragment_share(labels, shapes_hw, imgsz, hyp, seed=seed)
    factor = mosaic_factor(share)
    return MosaicCheck(share, kept, factor, float(hyp["mosaic"]) * factor)


def apply_automosaic(dataset, imgsz: int, hyp: Mapping[str, float]) -> MosaicCheck:
    """Check a training YoloDataset's labels and set its mosaic probability (before its loader's workers start)."""
    check = check_mosaic(dataset.labels, dataset.shapes, imgsz, hyp)
    dataset.set_mosaic(check.mosaic)
    return check
