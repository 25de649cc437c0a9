"""Optimizer choice: `auto` resolution and the three parameter groups."""
import math

import torch

from core.hyp import load_hyp
from core.model.yolo import Model
from core.optim import AUTO_SGD_STEPS, build_optimizer, plan_optimizer, resolve_auto


def test_auto_picks_adamw_for_short_runs_with_class_scaled_lr():
    hyp = load_hyp(None)
    name, run = resolve_auto("auto", hyp, nc=6, optimizer_steps=360)
    assert name == "AdamW"
    assert abs(run["lr0"] - 0.004) < 1e-12          # 0.04 / (4 + 6)
    assert run["momentum"] == 0.9 and run["warmup_bias_lr"] == 0.0
    assert hyp["lr0"] == 0.01                        # the caller's hyp is not modified
    _, run80 = resolve_auto("auto", hyp, nc=80, optimizer_steps=360)
    assert abs(run80["lr0"] - 0.04 / 84) < 1e-6     # ~0.0005 at COCO's 80 classes
    assert resolve_auto("auto", hyp, nc=1, optimizer_steps=360)[1]["lr0"] == 0.004  # capped


def test_auto_picks_sgd_with_the_hyp_for_long_runs_and_explicit_names_pass_through():
    hyp = load_hyp(None)
    assert resolve_auto("auto", hyp, nc=6, optimizer_steps=AUTO_SGD_STEPS + 1) == ("SGD", hyp)
    assert resolve_auto("AUTO", hyp, nc=6, optimizer_steps=AUTO_SGD_STEPS)[0] == "AdamW"
    for explicit in ("SGD", "Adam", "AdamW"):
        assert resolve_auto(explicit, hyp, nc=6, optimizer_steps=10) == (explicit, hyp)


def test_three_groups_split_decay():
    model = Model("studies/models/yolov5-cpu.yaml", nc=3)
    opt = build_optimizer(model, "AdamW", 0.001, 0.9, 5e-4)
    norm, conv, bias = opt.param_groups
    n_params = sum(1 for _ in model.parameters())
    assert len(norm["params"]) + len(conv["params"]) + len(bias["params"]) == n_params
    assert conv["weight_decay"] == 5e-4 and norm["weight_decay"] == 0.0 and bias["weight_decay"] == 0.0
    assert all(p.dim() == 1 for p in norm["params"]) and all(p.dim() == 4 for p in conv["params"])
    assert isinstance(opt, torch.optim.AdamW)


def test_plan_explicit_sgd_accumulates_to_64_and_scales_decay():
    hyp = load_hyp(None)
    plan = plan_optimizer("SGD", hyp, nc=6, images=800, batch_size=16, epochs=30)
    assert (plan.name, plan.nbs, plan.accumulate) == ("SGD", 64, 4)
    assert plan.weight_decay == hyp["weight_decay"] * 16 * 4 / 64
    assert plan.steps == 13 * 30  # ceil(800 / 64) optimizer steps per epoch
    assert plan.hyp is hyp  # an explicit optimizer is driven by the hyp as given
    odd = plan_optimizer("SGD", hyp, nc=6, images=800, batch_size=24, epochs=1)
    assert odd.accumulate == 3 and abs(odd.weight_decay - hyp["weight_decay"] * 72 / 64) < 1e-15


def test_plan_auto_short_run_is_adamw_stepping_every_batch():
    hyp = load_hyp(None)
    plan = plan_optimizer("auto", hyp, nc=6, images=800, batch_size=16, epochs=30)
    assert (plan.name, plan.nbs, plan.accumulate) == ("AdamW", 16, 1)
    assert plan.steps == 50 * 30 and plan.hyp["lr0"] == 0.004 and hyp["lr0"] == 0.01
    assert plan.weight_decay == hyp["weight_decay"]


def test_plan_auto_judges_length_by_unaccumulated_steps():
    hyp = load_hyp(None)
    # 626 batches x 16 epochs = 10,016 steps stepping every batch: too long for AdamW -> SGD accumulating to 64
    long = plan_optimizer("auto", hyp, nc=6, images=16 * 626, batch_size=16, epochs=16)
    assert long.steps == 157 * 16  # ceil(10016 / 64) per epoch
    assert (long.name, long.nbs, long.accumulate) == ("SGD", 64, 4) and long.hyp is hyp
    short = plan_optimizer("auto", hyp, nc=6, images=16 * 625, batch_size=16, epochs=16)  # exactly 10,000
    assert short.name == "AdamW"
    # a given nbs is kept and also sets the steps auto judges
    given = plan_optimizer("auto", hyp, nc=6, images=16 * 625, batch_size=16, epochs=1, nbs=32)
    assert (given.name, given.nbs, given.accumulate, given.steps) == ("AdamW", 32, 2, 313)


def _step_twice(model, opt):
    for _ in range(2):
        model.train()
        sum(o.float().pow(2).mean() for o in model(torch.rand(2, 3, 64, 64, dtype=torch.float64,
                                                              generator=torch.Generator().manual_seed(1)))).backward()
        opt.step()
        opt.zero_grad()


def test_cpu_optimizers_are_fused_and_step_as_the_per_tensor_ones():
    """The fused kernels are a speed lever only: in float64 two steps of each optimizer land where PyTorch's
    per-tensor (for-loop) implementation does."""
    for name in ("SGD", "Adam", "AdamW"):
        torch.manual_seed(0)
        fused_model = Model("studies/models/yolov5-cpu.yaml", nc=3).double()
        loop_model = Model("studies/models/yolov5-cpu.yaml", nc=3).double()
        loop_model.load_state_dict(fused_model.state_dict())
        fused = build_optimizer(fused_model, name, 0.01, 0.9, 5e-4)
        loop = build_optimizer(loop_model, name, 0.01, 0.9, 5e-4)
        assert all(g["fused"] for g in fused.param_groups), name
        for g in loop.param_groups:
            g["fused"] = g["foreach"] = False
        _step_twice(fused_model, fused)
        _step_twice(loop_model, loop)
        for (k, a), b in zip(fused_model.state_dict().items(), loop_model.state_dict().values()):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (name, k)


def test_ema_update_is_the_decayed_average():
    from core.ema import ModelEMA

    model = Model("studies/models/yolov5-cpu.yaml", nc=3).double()
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    before = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.train()
        model(torch.rand(2, 3, 64, 64, dtype=torch.float64))  # moves BN running stats and num_batches_tracked
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1.0))
    current = model.state_dict()
    for k, v in ema.ema.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, d * before[k] + (1 - d) * current[k], rtol=1e-12, atol=1e-12), k
        else:
            assert torch.equal(v, current[k]), k
