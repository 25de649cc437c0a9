"""core.diagnose: class-agnostic scoring and the confusion table, on hand-made predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.diagnose import ClassAgnostic, OneClassLoader, confusion
from core.val import validate


class Fixed(nn.Module):
    """Two boxes on a 64 px image: the first predicted as class 0 (right), the second as class 0 (wrong: it is 1)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.names = ["a", "b"]

    def forward(self, x):
        pred = torch.tensor([[[16.0, 16, 12, 12, 0.9, 0.8, 0.1],
                              [48.0, 48, 12, 12, 0.9, 0.7, 0.2]]]).repeat(len(x), 1, 1)
        return pred, []


class Loader(list):
    dataset = None


def _loader():
    imgs = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    targets = torch.tensor([[0, 0, 0.25, 0.25, 12 / 64, 12 / 64], [0, 1, 0.75, 0.75, 12 / 64, 12 / 64]])
    return Loader([(imgs, targets, ["x.jpg"], None)])


def test_class_agnostic_map_forgives_the_wrong_class_and_confusion_counts_it():
    loader = _loader()
    with_classes = validate(Fixed(), loader, progress=False)
    agnostic = validate(ClassAgnostic(Fixed()), OneClassLoader(loader), progress=False)
    assert with_classes["mAP50"] == pytest.approx(0.5, abs=0.01)  # class a found, class b never
    assert agnostic["mAP50"] == pytest.approx(1.0, abs=0.01)
    counts = confusion(Fixed(), loader, nc=2, conf=0.05)
    assert counts.tolist() == [[1, 0, 0], [1, 0, 0]]
    assert confusion(Fixed(), loader, nc=2, conf=0.75).tolist() == [[0, 0, 1], [0, 0, 1]]  # 0.72, 0.63: below


def test_class_agnostic_scores_by_objectness_times_best_class():
    pred, _ = ClassAgnostic(Fixed())(torch.zeros(1, 3, 64, 64))
    assert pred.shape == (1, 2, 6)
    np.testing.assert_allclose(pred[0, :, 4].numpy(), [0.72, 0.63], rtol=1e-6)
    assert (pred[0, :, 5] == 1).all()
