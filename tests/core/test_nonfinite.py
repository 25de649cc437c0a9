"""Non-finite training losses: a few bad steps are skipped, a run of them fails with a message that says where."""
from __future__ import annotations

import logging

import pytest
import torch

import core.loss
from core.callbacks import Callbacks
from core.nonfinite import MAX_NONFINITE_STEPS, NonFiniteGuard
from core.train import TrainOptions, fit
from tests.helpers import MODEL


def _nan_at(monkeypatch, bad_calls: set[int]) -> None:
    """Training losses (not validation's, which runs without grad) of the given 1-based calls become NaN."""
    calls = [0]

    class Poisoned(core.loss.ComputeLoss):
        def __call__(self, preds, targets):
            loss, items = super().__call__(preds, targets)
            if torch.is_grad_enabled():
                calls[0] += 1
                if calls[0] in bad_calls:
                    return loss * float("nan"), items * float("nan")
            return loss, items
    monkeypatch.setattr(core.loss, "ComputeLoss", Poisoned)  # the trainer imports it at setup


def _opts(tmp_path, **kw):
    # 32 images / batch 8 = 4 batches an epoch; nbs 8: every batch is one optimizer step
    return TrainOptions(**{**dict(epochs=2, batch_size=8, imgsz=64, workers=0, nbs=8, progress=False, save=False,
                                  project=str(tmp_path), name="run", close_mosaic=0), **kw})


def test_fewer_consecutive_bad_steps_than_the_limit_are_skipped(tiny_data, tmp_path, monkeypatch, caplog):
    torch.set_num_threads(1)
    _nan_at(monkeypatch, {2, 3})  # two in a row, then finite again
    steps = []
    cb = Callbacks(after_clip=lambda model, info: steps.append(info.samples))
    with caplog.at_level(logging.WARNING, logger="core.train"):
        res = fit(tiny_data, MODEL, {"warmup_epochs": 0.0}, _opts(tmp_path), cb)
    assert res.stop_reason == "completed" and len(steps) == 8 - 2  # the two poisoned steps were not taken
    assert all(torch.isfinite(v).all() for v in res.model.state_dict().values() if v.is_floating_point())
    assert all(h["train_box"] == h["train_box"] for h in res.history)  # epoch means leave the NaN batches out
    assert any("2 optimizer steps skipped for a non-finite loss" in r.message for r in caplog.records)


def test_the_limit_of_consecutive_bad_steps_fails_with_step_and_loss_terms(tiny_data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    _nan_at(monkeypatch, set(range(3, 3 + MAX_NONFINITE_STEPS)))
    with pytest.raises(FloatingPointError) as e:
        fit(tiny_data, MODEL, {"warmup_epochs": 0.0}, _opts(tmp_path))
    msg = str(e.value)
    assert f"{MAX_NONFINITE_STEPS} optimizer steps in a row" in msg
    assert f"optimizer step {2 + MAX_NONFINITE_STEPS}" in msg and "box/obj/cls = [nan, nan, nan]" in msg


def test_guard_reads_the_flag_only_at_steps_and_resets():
    g = NonFiniteGuard(torch.device("cpu"), limit=2)
    items = torch.tensor([0.1, 0.2, 0.3])
    g.observe(torch.tensor(float("inf")), items)
    g.observe(torch.tensor(1.0), items * 2)  # a later finite batch in the same step does not clear it
    assert not g.step_ok(1, 0, 1, 0.01) and g.skipped == 1
    g.observe(torch.tensor(1.0), items)
    assert g.step_ok(2, 0, 2, 0.01) and g.in_a_row == 0  # a good step resets the count
    g.observe(torch.tensor(float("nan")), items)
    assert not g.step_ok(3, 0, 3, 0.01)
    g.observe(torch.tensor(float("nan")), items)
    with pytest.raises(FloatingPointError, match=r"optimizer step 4 \(epoch 0, batch 4\).*\[0.1, 0.2, 0.3\]"):
        g.step_ok(4, 0, 4, 0.01)


def _ddp_rank(rank: int, init_file: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        g = NonFiniteGuard(torch.device("cpu"), distributed=True, limit=2)
        one = torch.ones(3)
        g.observe(torch.tensor(float("nan") if rank == 0 else 1.0), one)  # only rank 0 sees a bad loss
        first = g.step_ok(1, 0, 0, 0.01)
        g.observe(torch.tensor(float("nan") if rank == 1 else 1.0), one)  # now only rank 1
        try:
            g.step_ok(2, 0, 1, 0.01)
            second = "went on"
        except FloatingPointError:
            second = "raised"
        results[rank] = (first, second)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_decide_together(tmp_path):
    """A bad loss on one rank skips the step on every rank, and every rank fails at the same step."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_ddp_rank, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    assert dict(results) == {0: (False, "raised"), 1: (False, "raised")}
