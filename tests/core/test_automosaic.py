"""AutoMosaic: the simulated fragment share against a hand-derived geometry, the rule, and the trainer's use of it."""
import logging

import numpy as np
import pytest

from core.data.automosaic import F_OFF, F_ON, FRAGMENT, check_mosaic, fragment_share, mosaic_factor
from core.hyp import default_hyp
from tests.helpers import MODEL, SHAPE_NAMES, synthetic_yaml

STILL = {"degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, "perspective": 0.0}


def _centred_object_reference(s: int, a: float) -> float:
    """Fragment share for one object per image, a square of side a * s centred in its s x s image, mosaic
    without warp (no scale, translate, rotation), derived by hand per axis.

    The canvas is 2s wide and the output keeps its central s, [s/2, 3s/2]. A left tile spans [xc - s, xc],
    so its object spans xc - s/2 +- a s/2; a right tile's, xc + s/2 +- a s/2. On the canvas an object keeps its
    part inside [0, 2s], in the output its part inside [s/2, 3s/2]. A label is kept when both sides shown
    exceed 2 px and the area shown is over 0.1 of the area on the canvas (augment.box_candidates); it is a
    fragment when the area shown is under FRAGMENT of the whole object's. Averaged over every integer
    centre, as int(uniform(s/2, 3s/2)) draws them."""
    centres = np.arange(s // 2, 3 * s // 2, dtype=float)
    middle = np.concatenate((centres - s / 2, centres + s / 2))  # object centres: left tiles, then right tiles
    lo, hi = middle - a * s / 2, middle + a * s / 2
    shown = (np.minimum(hi, 3 * s / 2) - np.maximum(lo, s / 2)).clip(0)
    canvas = np.minimum(hi, 2 * s) - np.maximum(lo, 0)
    sx, sy = np.meshgrid(shown, shown)
    cx, cy = np.meshgrid(canvas, canvas)
    kept = (sx > 2) & (sy > 2) & (sx * sy / (cx * cy) > 0.1)
    fragment = kept & (sx * sy / (a * s) ** 2 < FRAGMENT)
    return fragment.sum() / kept.sum()


@pytest.mark.parametrize("a", [1.0, 0.6, 0.3])
def test_fragment_share_of_centred_objects_matches_the_geometry(a):
    s = 160
    labels = [np.array([[0, 0.5, 0.5, a, a]])] * 10
    share, kept = fragment_share(labels, np.full((10, 2), 480), s, {**default_hyp(), **STILL}, samples=2000)
    reference = _centred_object_reference(s, a)
    assert kept > 2000 and abs(share - reference) < 0.02, (share, reference)


def test_small_objects_keep_the_hyps_mosaic():
    rng = np.random.default_rng(0)
    labels = [np.column_stack((np.zeros(6), rng.uniform(0.1, 0.9, (6, 2)), np.full((6, 2), 0.05))) for _ in range(20)]
    check = check_mosaic(labels, np.full((20, 2), 256), 160, {**default_hyp(), "mosaic": 0.8})
    assert check.fragment_share < F_ON and check.factor == 1.0 and check.mosaic == 0.8
    assert "mosaic 0.8 kept" in check.message(0.8)


def test_large_objects_turn_mosaic_off_and_say_so():
    labels = [np.array([[1, 0.5, 0.5, 0.8, 0.7]])] * 20
    check = check_mosaic(labels, np.full((20, 2), 256), 160, default_hyp())
    assert check.fragment_share > F_OFF and check.mosaic == 0.0
    assert "mosaic 1 -> 0.00" in check.message(1.0)


def test_factor_is_one_below_on_zero_above_off_and_linear_between():
    assert mosaic_factor(0.0) == mosaic_factor(F_ON) == 1.0
    assert mosaic_factor(F_OFF) == mosaic_factor(1.0) == 0.0
    assert mosaic_factor((F_ON + F_OFF) / 2) == pytest.approx(0.5)


def test_no_labels_keep_mosaic():
    share, kept = fragment_share([np.zeros((0, 5))] * 3, np.full((3, 2), 64), 64, default_hyp(), samples=10)
    assert (share, kept) == (0.0, 0)


@pytest.fixture(scope="module")
def large_data(tmp_path_factory):
    return synthetic_yaml(tmp_path_factory.mktemp("large"), "large", SHAPE_NAMES,
                          "seed: 3, n_train: 16, n_val: 4, imgsz: 96, min_size: 60, max_size: 94, max_objects: 2")


@pytest.mark.parametrize("automosaic", [True, False])
def test_trainer_applies_the_check_before_its_workers_start(large_data, tmp_path, monkeypatch, caplog, automosaic):
    import core.data.dataset as dataset_mod
    from core.train import TrainOptions, fit

    used = []
    real = dataset_mod.YoloDataset._augmented
    monkeypatch.setattr(dataset_mod.YoloDataset, "_augmented", lambda self, i: (used.append(self.hyp["mosaic"]),
                                                                                real(self, i))[1])
    caplog.set_level(logging.INFO, logger="core.train")
    opts = TrainOptions(epochs=1, batch_size=8, imgsz=64, workers=0, nbs=8, progress=False, project=str(tmp_path),
                        name="run", seed=0, save=False, close_mosaic=0, automosaic=automosaic)
    fit(large_data, MODEL, None, opts)
    said = [r.message for r in caplog.records if r.message.startswith("AutoMosaic")]
    assert used and set(used) == ({0.0} if automosaic else {1.0})
    assert len(said) == automosaic and (not said or "-> 0.00" in said[0])
