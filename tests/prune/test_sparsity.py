"""Sparsity training adds N*s*sign(gamma) to the gamma gradients exactly once per optimizer step, after clipping."""
import copy
import json

import pytest
import torch

from core.callbacks import Callbacks, StepInfo
from core.model.yolo import Model
from prune.sparsity import SparsityTrainer, add_l1_subgradient, add_polar_subgradient, gamma_stats, prunable_bns, s_at
from tests.helpers import MODELS


def test_schedules():
    assert s_at(3, 10, 1e-3, "const") == 1e-3
    assert s_at(0, 10, 1e-3, "linear") == pytest.approx(1e-3)
    assert s_at(9, 10, 1e-3, "linear") == pytest.approx(1e-4)
    assert s_at(4, 10, 1e-3, "step") == 1e-3 and s_at(5, 10, 1e-3, "step") == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="--s-schedule 'cosine'"):
        s_at(0, 10, 1e-3, "cosine")


def test_penalty_once_per_optimizer_step_with_accumulation(tmp_path):
    """A fake trainer loop: 2 micro-batches accumulate into each optimizer step (like fit with nbs/bs=2)."""
    torch.manual_seed(0)
    model = Model(str(MODELS / "yolov5-cpu.yaml"), nc=3).train()
    bns = prunable_bns(model)
    assert len(bns) == len([m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    with torch.no_grad():
        bns[0].weight[:3] = torch.tensor([-0.5, 0.0, 0.5])  # a negative, a zero and a positive gamma
    s = 0.01
    sparse = SparsityTrainer(s=s, schedule="const", epochs=1, penalty="l1", log_path=tmp_path / "gamma.jsonl")
    cb = sparse.callbacks()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights stay put, gradients are inspected
    ema = copy.deepcopy(model)
    for bn in prunable_bns(ema):
        bn.weight.data.zero_()  # the EMA differs from the live model: the log must show the EMA's gammas
    cb.call("on_train_start", model)
    cb.call("on_epoch_start", 0)
    steps, accumulate, batch = 0, 2, 2
    for i in range(4):  # 4 micro-batches -> 2 optimizer steps
        out = model(torch.rand(2, 3, 64, 64))
        sum(o.float().pow(2).mean() for o in out).backward()
        if (i + 1) % accumulate == 0:
            before = [bn.weight.grad.clone() for bn in bns]
            cb.call("after_clip", model, StepInfo(clip_factor=0.25 * (steps + 1), samples=batch * accumulate, ema=ema))
            for bn, g in zip(bns, before):  # per-sample-mean scale: N = 4 images per step
                assert torch.allclose(bn.weight.grad - g, 4 * s * torch.sign(bn.weight.detach()), atol=1e-9)
            assert bns[0].weight.grad[1] == before[0][1]  # sign(0) = 0: no push on a zero gamma
            opt.step()
            opt.zero_grad()
            steps += 1
    cb.call("on_epoch_end", 0, {})
    assert sparse.steps == steps == 2
    rows = [json.loads(line) for line in (tmp_path / "gamma.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [-1, 0] and rows[1]["steps"] == 2
    assert rows[1]["clip_mean"] == pytest.approx(0.375) and rows[1]["clip_min"] == 0.25
    assert rows[0]["gammas_of"] == "model" and rows[0]["share_small"] < 0.5
    assert rows[1]["gammas_of"] == "ema" and rows[1]["share_small"] == 1.0  # the EMA's zeroed gammas
    assert sum(rows[1]["counts"]) == rows[1]["n"] == sum(bn.num_features for bn in bns)


def test_add_l1_subgradient_without_grad():
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([-2.0, -0.1, 0.3, 1.0]))
    add_l1_subgradient([bn], 0.5)
    assert bn.weight.grad.tolist() == [-0.5, -0.5, 0.5, 0.5]


def test_polar_subgradient_is_the_regularizer_s_gradient():
    """Against autograd of s*(t*sum|g| - sum| |g| - mean|g| |) over two layers (the mean is over both)."""
    torch.manual_seed(0)
    bns = [torch.nn.BatchNorm2d(5).double(), torch.nn.BatchNorm2d(7).double()]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.randn(bn.num_features, dtype=torch.float64))
    s, t = 0.3, 1.2
    g = torch.cat([bn.weight for bn in bns])
    reference = torch.autograd.grad(s * (t * g.abs().sum() - (g.abs() - g.abs().mean()).abs().sum()),
                                    [bn.weight for bn in bns])
    add_polar_subgradient(bns, s, t)
    for bn, ref in zip(bns, reference):
        assert torch.allclose(bn.weight.grad, ref, atol=1e-12)


def test_polar_splits_gammas_where_l1_shrinks_them_alike():
    """Gradient steps on the penalty alone: L1 moves every gamma by the same amount; polarization sends the
    gammas below the mean to zero and leaves those above it large (the bimodal histogram)."""
    start = torch.linspace(0.5, 1.5, 11)
    ends = {}
    for name in ("l1", "polar"):
        bn = torch.nn.BatchNorm2d(11)
        with torch.no_grad():
            bn.weight.copy_(start)
        for _ in range(200):
            bn.weight.grad = None
            if name == "l1":
                add_l1_subgradient([bn], 2e-3)
            else:
                add_polar_subgradient([bn], 2e-3, 1.2)
            with torch.no_grad():
                bn.weight -= bn.weight.grad
        ends[name] = bn.weight.detach().abs()
    assert torch.allclose(start - ends["l1"], torch.full((11,), 0.4), atol=1e-5)  # a shift: no gamma separates
    low, high = ends["polar"][:5], ends["polar"][6:]  # below / above the mean 1.0
    assert low.max() < 1e-2 and high.min() > 0.9  # the upper group lost ~0.12, the lower all of it


def test_gamma_stats_histogram():
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.0, 1e-3, -5e-3, 0.5, 50.0]))
    st = gamma_stats([bn])
    assert st["n"] == 5 and sum(st["counts"]) == 5
    assert st["share_small"] == pytest.approx(0.6)  # 0, 1e-3 and 5e-3 are below 1e-2
    assert st["counts"][0] == 1  # the exact zero lands in the first bin [0, 1e-5)
    assert st["counts"][-1] == 1  # 50 is clamped into the last bin (up to 10^1.5)


def test_fit_calls_after_clip_with_clipped_gradients(tmp_path):
    """In the real trainer the hook runs after clipping: the loss gradients it sees have norm <= 10."""
    from core.train import TrainOptions, fit

    data = tmp_path / "tiny.yaml"
    data.write_text("path: shapes\ntrain: images/train\nval: images/val\nnames: {0: circle, 1: square}\n"
                    "synthetic: {seed: 0, n_train: 16, n_val: 4, imgsz: 64}\n")
    seen = []

    def after_clip(model, info):
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
        seen.append((float(norm), info))

    def inflate(model):  # before clipping: make every step's gradient far larger than the clip norm
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(1e4)

    hyp = {"warmup_epochs": 0.0}
    fit(str(data), str(MODELS / "yolov5-cpu.yaml"), hyp,
        TrainOptions(epochs=1, batch_size=4, imgsz=64, workers=0, nbs=8, optimizer="SGD", save=False,
                     progress=False, close_mosaic=0, threads=1),
        Callbacks(after_backward=inflate, after_clip=after_clip))
    assert len(seen) == 2  # 16 images, batch 4, nbs 8: 2 optimizer steps
    for norm, info in seen:
        assert info.samples == 8 and info.ema is not None
        assert info.clip_factor < 1e-2 and norm == pytest.approx(10.0, rel=1e-3)  # clipped, then the hook
