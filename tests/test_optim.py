"""Optimizer choice: `auto` resolution and the three parameter groups."""
import torch

from core.hyp import load_hyp
from core.model.yolo import Model
from core.optim import AUTO_SGD_STEPS, build_optimizer, resolve_auto


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
