"""AutoAnchor: anchors checked against the labels (sizes per image, as the loader scales them), refit when poor."""
from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint, model_from_checkpoint
from core.data.config import load_data_config
from core.data.dataset import YoloDataset
from core.model import Model, anchor_metrics, check_anchors, label_wh, load_arch, model_anchor_pixels
from core.train import TrainOptions, fit
from tests.helpers import MODEL

BAD = [[200, 8, 210, 9, 220, 10]] * 3  # long thin boxes: no shape in the data is within 4x of them


def test_label_sizes_follow_each_images_aspect_ratio():
    labels = [np.array([[0, 0.5, 0.5, 0.5, 0.5]]), np.array([[1, 0.5, 0.5, 0.25, 1.0]])]
    shapes_hw = np.array([[100, 200], [300, 150]])  # (h, w): a landscape and a portrait image
    wh = label_wh(labels, shapes_hw, imgsz=64)
    # landscape: long side 200 -> 64, the image is 64 x 32 px: the box is 32 x 16 (not 32 x 32 as if square)
    # portrait: long side 300 -> 64, the image is 32 x 64 px: the box is 8 x 64
    assert np.allclose(wh, [[32, 16], [8, 64]])
    assert np.allclose(label_wh(labels, shapes_hw, 64, gain=np.array([1.1, 0.9])), [[35.2, 17.6], [7.2, 57.6]])


@pytest.fixture(scope="module")
def tiny_set(tiny_data):
    return YoloDataset(load_data_config(tiny_data)["train"], 64)


def test_bad_anchors_are_refit_and_the_refit_is_seeded(tiny_set, caplog):
    arch = {**load_arch(MODEL), "anchors": BAD}
    a, b = Model(copy.deepcopy(arch), nc=6), Model(copy.deepcopy(arch), nc=6)
    with caplog.at_level(logging.INFO, logger="core.model.anchors"):
        report = check_anchors(a, tiny_set.labels, tiny_set.shapes, 64, thr=4.0, seed=0, gen=200)
    assert report["bpr"] < 0.5 and report["replaced"] and report["new_bpr"] >= 0.98
    wh = label_wh(tiny_set.labels, tiny_set.shapes, 64)
    assert anchor_metrics(model_anchor_pixels(a), wh, 4.0)["bpr"] >= 0.98
    assert a.arch["anchors"] != BAD  # the architecture dict carries them into checkpoints
    assert any("anchors refit" in r.message for r in caplog.records)
    check_anchors(b, tiny_set.labels, tiny_set.shapes, 64, thr=4.0, seed=0, gen=200)
    assert torch.equal(a.model[-1].anchors, b.model[-1].anchors)  # same seed, same anchors


def test_good_anchors_and_trained_heads_are_left_alone(tiny_set):
    good = Model(MODEL, nc=6)
    before = model_anchor_pixels(good).copy()
    report = check_anchors(good, tiny_set.labels, tiny_set.shapes, 64, thr=4.0)
    assert report["bpr"] >= 0.98 and not report["replaced"] and np.array_equal(model_anchor_pixels(good), before)
    trained = Model({**load_arch(MODEL), "anchors": BAD}, nc=6)
    report = check_anchors(trained, tiny_set.labels, tiny_set.shapes, 64, thr=4.0, refit=False)
    assert report["bpr"] < 0.5 and not report["replaced"] and trained.arch["anchors"] == BAD


def test_training_refits_once_and_checkpoints_keep_the_anchors(tiny_data, tmp_path):
    torch.set_num_threads(1)
    opts = dict(epochs=1, batch_size=8, imgsz=64, workers=0, nbs=8, progress=False, project=str(tmp_path),
                close_mosaic=0)
    arch = {**load_arch(MODEL), "anchors": BAD}
    first = fit(tiny_data, copy.deepcopy(arch), None, TrainOptions(name="a", **opts))
    fitted = load_checkpoint(first.best_path)["arch"]["anchors"]
    assert fitted != BAD
    model = model_from_checkpoint(first.best_path)
    assert np.allclose(model_anchor_pixels(model).reshape(3, 6), fitted, atol=0.01)
    # finetuning the checkpoint (as evolution's trials do, with another anchor_t) keeps its anchors
    again = fit(tiny_data, str(first.best_path), {"anchor_t": 2.0}, TrainOptions(name="b", **opts))
    assert load_checkpoint(again.best_path)["arch"]["anchors"] == fitted
    off = fit(tiny_data, copy.deepcopy(arch), None, TrainOptions(name="c", autoanchor=False, **opts))
    assert load_checkpoint(off.best_path)["arch"]["anchors"] == BAD


def test_hyp_anchor_count_refits_by_kmeans(tiny_set):
    from core.model import fit_anchor_count
    m = Model(MODEL, nc=6)
    fit_anchor_count(m, 2, tiny_set.labels, tiny_set.shapes, 64, thr=4.0, seed=0)
    assert m.na == 2 and [len(level) for level in m.arch["anchors"]] == [4, 4, 4]
    wh = label_wh(tiny_set.labels, tiny_set.shapes, 64)
    assert anchor_metrics(model_anchor_pixels(m), wh, 4.0)["bpr"] >= 0.98
