"""Callbacks.extra_loss: the trainer adds its term to every training batch's loss before backward."""
from __future__ import annotations

import pytest
import torch

from core.callbacks import Callbacks
from core.nonfinite import MAX_NONFINITE_STEPS
from core.train import fit
from tests.helpers import MODEL, train_opts


def test_extra_loss_sees_the_batch_and_its_term_reaches_the_loss(tiny_data, tmp_path):
    """The hook gets the network's input batch and its raw training maps (with grad); its value is part of the
    loss the trainer checks and backpropagates: a NaN term alone makes every step non-finite, so the run fails
    after MAX_NONFINITE_STEPS steps, as a NaN detection loss does (a term left out would train normally)."""
    torch.set_num_threads(1)
    seen = []

    def nan_term(imgs, preds):
        seen.append((tuple(imgs.shape), imgs.dtype, float(imgs.min()), float(imgs.max()),
                     [tuple(p.shape) for p in preds], all(p.requires_grad for p in preds)))
        return sum(p.float().sum() for p in preds) * float("nan")

    with pytest.raises(FloatingPointError, match=f"{MAX_NONFINITE_STEPS} optimizer steps in a row"):
        fit(tiny_data, MODEL, {"warmup_epochs": 0.0}, train_opts(tmp_path, epochs=1, autoanchor=False,
                                                                   automosaic=False), Callbacks(extra_loss=nan_term))
    assert len(seen) == MAX_NONFINITE_STEPS  # batch 8 = nbs: one step per batch
    shape, dtype, lo, hi, maps, grad = seen[0]
    assert shape == (8, 3, 64, 64) and dtype == torch.float32 and 0.0 <= lo <= hi <= 1.0 and hi > 0
    assert maps == [(8, 3, 8, 8, 11), (8, 3, 4, 4, 11), (8, 3, 2, 2, 11)] and grad
