"""The YOLOv5 v7.0 side of bench/fidelity.py: one case in, YOLOv5's numbers out.

Runs in the peer venv (`make .venv-peer/.yolov5`) as `python bench/fidelity_peer.py DIR`: reads DIR/case.pt
(written by bench.fidelity: our weights, a batch, the hyp, the gradients to step with, the schedules to
trace), builds the model from yolov5's own yolov5n.yaml, loads our weights into it and writes DIR/peer.pt.
Imports nothing from this repository but peer_yolov5 (the wrappers that let yolov5 7.0.14 run here).

YOLOv5's model, loss, optimizer groups, EMA and lr lambda are called as published. The few lines of its
train.py that are not functions (loss-gain scaling, weight-decay scaling, warmup, when to step) are written
again below from train.py v7.0, each marked with the train.py lines it follows.
"""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import peer_yolov5

peer_yolov5.install_shims()
import yolov5  # noqa: E402 (after the shims)
from yolov5.models.yolo import Model  # noqa: E402
from yolov5.utils.general import LOGGER  # noqa: E402
from yolov5.utils.loss import ComputeLoss  # noqa: E402
from yolov5.utils.torch_utils import ModelEMA, smart_optimizer  # noqa: E402

NBS = 64  # train.py: nbs = 64, fixed
ROLES = ("bias", "weight", "norm")


def build(case: dict) -> tuple[nn.Module, dict]:
    """yolov5n from the package's yaml in float64 with our weights; how the state dicts lined up."""
    torch.manual_seed(0)
    model = Model(str(Path(yolov5.__file__).parent / "models" / case["yaml"]), ch=3, nc=case["nc"]).double()
    ours, theirs = case["state_dict"], model.state_dict()
    report = {"missing": sorted(set(theirs) - set(ours)), "unexpected": sorted(set(ours) - set(theirs)),
              "shape": sorted(k for k in set(ours) & set(theirs) if ours[k].shape != theirs[k].shape)}
    if not any(report.values()):
        model.load_state_dict(ours)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    report["bn"] = [bn.eps, bn.momentum]
    report["anchors"] = model.model[-1].anchors.clone()
    report["stride"] = model.model[-1].stride.clone()
    return model, report


def head_prior(case: dict) -> torch.Tensor:
    """The objectness and class biases YOLOv5's Model adds to the head convs' random init (its
    _initialize_biases on zeroed biases), per level and anchor: (levels x anchors, 1 + nc)."""
    model = Model(str(Path(yolov5.__file__).parent / "models" / case["yaml"]), ch=3, nc=case["nc"]).double()
    detect = model.model[-1]
    for conv in detect.m:
        nn.init.zeros_(conv.bias)
    model._initialize_biases()
    return torch.cat([conv.bias.detach().view(detect.na, -1)[:, 4:] for conv in detect.m])


def scaled_hyp(hyp: dict, nl: int, nc: int, imgsz: int, batch_size: int) -> dict:
    """train.py v7.0 lines 171-174 and 256-259: weight decay to the nominal batch, loss gains to the model."""
    hyp = dict(hyp)
    accumulate = max(round(NBS / batch_size), 1)
    hyp["weight_decay"] *= batch_size * accumulate / NBS
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    hyp["label_smoothing"] = 0.0
    return hyp


def loss_and_grads(model: nn.Module, case: dict, hyp: dict) -> dict:
    """Forward in train mode, YOLOv5's loss, its target assignment, the gradients and the state after."""
    model.train()
    model.hyp = hyp
    preds = model(case["images"])
    compute_loss = ComputeLoss(model)
    loss, items = compute_loss(preds, case["targets"])
    tcls, tbox, indices, anch = compute_loss.build_targets(preds, case["targets"])
    model.zero_grad()
    loss.backward()
    return {"preds": [p.detach() for p in preds], "loss": loss.detach(), "items": items,
            "assign": [{"b": b, "a": a, "gj": gj, "gi": gi, "tbox": tb, "anch": an, "tcls": tc}
                       for (b, a, gj, gi), tb, an, tc in zip(indices, tbox, anch, tcls)],
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()},
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def warmup(optimizer, ni: int, nw: int, epoch: int, hyp: dict, lf, batch_size: int) -> int:
    """train.py v7.0 lines 311-318: lr (bias group 0 from warmup_bias_lr down, the others from 0 up) and SGD
    momentum interpolated over nw iterations; the accumulation at this iteration."""
    xi = [0, nw]
    accumulate = max(1, np.interp(ni, xi, [1, NBS / batch_size]).round())
    for j, x in enumerate(optimizer.param_groups):
        x["lr"] = np.interp(ni, xi, [hyp["warmup_bias_lr"] if j == 0 else 0.0, x["initial_lr"] * lf(epoch)])
        if "momentum" in x:
            x["momentum"] = np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]])
    return int(accumulate)


def linear_lf(epochs: int, lrf: float):
    """train.py v7.0 line 181 (the default, linear schedule)."""
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def roles(model: nn.Module, optimizer) -> list[str]:
    """Each param group's role, read from what it holds: biases, decayed weights or norm weights."""
    bias = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    norm = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    out = []
    for g in optimizer.param_groups:
        ids = {id(p) for p in g["params"]}
        out.append("bias" if ids <= bias else "norm" if ids <= norm else "weight")
    return out


def beta1(group: dict) -> float:
    return float(group["momentum"] if "momentum" in group else group["betas"][0])


def optimizer_steps(case: dict, spec: dict) -> dict:
    """smart_optimizer with the recipe's settings, stepped with the case's gradients at the given iterations
    (warmup, clip at 10 as train.py line 343); the weights after and each parameter's settings at the last step."""
    model, _ = build(case)
    hyp = scaled_hyp(case["hyp"] | spec["hyp"], 3, case["nc"], case["imgsz"], spec["batch_size"])
    optimizer = smart_optimizer(model, spec["optimizer"], hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    lf = linear_lf(spec["epochs"], hyp["lrf"])
    torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)  # sets initial_lr, as train.py line 182
    for ni, grads in zip(spec["iterations"], case["step_grads"]):
        warmup(optimizer, ni, spec["warmup_iters"], 0, hyp, lf, spec["batch_size"])
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        optimizer.step()
        optimizer.zero_grad()
    names = {id(p): n for n, p in model.named_parameters()}
    settings = {names[id(p)]: [float(g["lr"]), float(g["weight_decay"]), beta1(g), bool(g.get("nesterov", False))]
                for g in optimizer.param_groups for p in g["params"]}
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "settings": settings}


def schedule(spec: dict) -> dict:
    """train.py v7.0's per-iteration lr, momentum (beta1 for Adam), accumulation and optimizer steps over
    `epochs` epochs of `nb` batches (lines 267-273, 309-348, 364), with YOLOv5's EMA decay at each step."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))  # one of each group
    hyp = scaled_hyp(spec["hyp"], 3, 10, 640, spec["batch_size"])
    optimizer = smart_optimizer(model, spec["optimizer"], hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    group_roles = roles(model, optimizer)
    lf = linear_lf(spec["epochs"], hyp["lrf"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(model)
    nb = spec["nb"]
    nw = max(round(hyp["warmup_epochs"] * nb), 100)
    accumulate, last_opt_step = max(round(NBS / spec["batch_size"]), 1), -1
    trace = {k: [] for k in ("lr_bias", "lr_weight", "lr_norm", "beta1", "accumulate", "step", "ema_decay")}
    for epoch in range(spec["epochs"]):
        for i in range(nb):
            ni = i + nb * epoch
            if ni <= nw:
                accumulate = warmup(optimizer, ni, nw, epoch, hyp, lf, spec["batch_size"])
            step = ni - last_opt_step >= accumulate
            if step:
                last_opt_step = ni
                ema.updates += 1
            lrs = {r: float(g["lr"]) for r, g in zip(group_roles, optimizer.param_groups)}
            for r in ROLES:
                trace[f"lr_{r}"].append(lrs[r])
            trace["beta1"].append(beta1(optimizer.param_groups[group_roles.index("weight")]))
            trace["accumulate"].append(accumulate)
            trace["step"].append(step)
            trace["ema_decay"].append(ema.decay(ema.updates) if step else float("nan"))
        with warnings.catch_warnings():  # no optimizer.step() here: only the lr is traced
            warnings.simplefilter("ignore")
            scheduler.step()
    return {"nw": nw, **{k: torch.tensor(v, dtype=torch.float64) for k, v in trace.items()}}


def main() -> None:
    folder = Path(sys.argv[1])
    case = torch.load(folder / "case.pt", weights_only=True)
    torch.set_num_threads(case.get("threads", 1))
    LOGGER.setLevel(logging.WARNING)  # not the model summary of every build
    model, report = build(case)
    out: dict = {"build": report, "yolov5": yolov5.__version__, "torch": str(torch.__version__),
                 "prior": head_prior(case)}
    if not any(report[k] for k in ("missing", "unexpected", "shape")):
        hyp = scaled_hyp(case["hyp"], model.model[-1].nl, case["nc"], case["imgsz"], case["batch_size"])
        out["hyp"] = hyp
        out["forward"] = loss_and_grads(model, case, hyp)
        out["steps"] = {name: optimizer_steps(case, spec) for name, spec in case["steps"].items()}
    out["schedules"] = {name: schedule(spec) for name, spec in case["schedules"].items()}
    torch.save(out, folder / "peer.pt")
    print(f"fidelity_peer: yolov5 {yolov5.__version__} wrote {folder / 'peer.pt'}", flush=True)


if __name__ == "__main__":
    main()
