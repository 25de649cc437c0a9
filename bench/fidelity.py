"""`python -m bench.fidelity` (make bench-fidelity): our engine against YOLOv5 v7.0 itself, number by number.

Two processes exchange tensors through files in a temporary folder: this one (our engine, .venv) writes
case.pt, and bench/fidelity_peer.py (yolov5 7.0.14 in the peer venv, `make .venv-peer/.yolov5`) answers
with peer.pt. The case: our yolov5n (studies/models/yolov5n.yaml, `--nc` classes) in float64 with its
state dict loaded into YOLOv5's model built from the package's own yolov5n.yaml, and one seeded batch of
`--batch` noise images with boxes from 3 to 150 px at `--imgsz` (some on the image border, some too
elongated for every anchor). Compared, in this order:
- the build: state-dict keys and shapes, BN eps/momentum, strides, anchors; the head's initial biases;
- the forward pass (train mode), the loss components (box, obj, cls), the target assignment (positives per
  level, each one's image, anchor, cell and class; box targets; matched anchors), every gradient, and the
  state (BN running statistics) after the pass;
- two optimizer steps from the same gradients (ours from the pass above, then a seeded random set) for
  YOLOv5's SGD scratch-low recipe and for AdamW at lr0 0.002857: each parameter's lr, weight decay,
  momentum/beta1 and nesterov, and the weights after;
- the per-iteration lr of each parameter group, momentum/beta1, accumulation, optimizer steps and EMA
  decay over whole schedules (warmup of one epoch and of three, a few epochs), each engine's own code for
  the same settings; and our `--optimizer auto` against YOLOv5's AdamW at the same lr0, the issue's recipe.
The table (also the differences on purpose, with the page that explains each: docs/recipe-vs-yolov5.md) is
appended to bench/results/fidelity.md (`--no-record`: not).
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.fidelity_diff import Row, assignment_rows, dict_diff, table, tensor_diff, trace_rows
from bench.record import markdown_table, publish
from core.ema import ModelEMA
from core.hyp import load_hyp
from core.loss import ComputeLoss, scaled_gains
from core.model import Model
from core.optim import build_optimizer, lr_lambda, plan_optimizer, warmup

REPO = Path(__file__).resolve().parents[1]
MODEL_YAML = REPO / "studies" / "models" / "yolov5n.yaml"
PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parent / "fidelity_peer.py"
ADAMW_LR0 = 0.002857  # what `--optimizer auto` resolves to for 10 classes: the AdamW runs
IMAGES, EPOCHS = 800, 30  # the run: 800 training images, 30 epochs, batch 16
SCHEDULE_KEYS = ("lr_bias", "lr_weight", "lr_norm", "beta1", "accumulate", "step", "ema_decay")
ROLES = ("bias", "weight", "norm")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fidelity", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--peer-python", default=str(PEER_PYTHON), help="python of the venv with yolov5 7.0.14")
    p.add_argument("--nc", type=int, default=10)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=4, help="images in the compared batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", default="", help="folder to keep case.pt and peer.pt in (default: a temporary one)")
    p.add_argument("--no-record", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    case = make_case(args.seed, args.nc, args.imgsz, args.batch)
    ours = {"forward": ours_forward(case)}
    case["step_grads"] = step_gradients(ours["forward"]["grads"], args.seed)
    ours["steps"] = {name: ours_steps(case, spec) for name, spec in case["steps"].items()}
    ours["steps"]["AdamW, beta1 held at momentum"] = ours_steps(case, case["steps"]["AdamW"], hold_beta1=True)
    ours["schedules"] = {name: ours_schedule(spec) for name, spec in case["schedules"].items()}
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(case, folder / "case.pt")
        subprocess.run([args.peer_python, str(PEER_SCRIPT), str(folder)], check=True)
        peer = torch.load(folder / "peer.pt", weights_only=True)
    rows = build_rows(case, ours, peer)
    header = ["part", "compared", "size", "max abs diff", "relative diff", "verdict", "why / note"]
    text = (f"yolov5n, nc={args.nc}, {args.batch} images at {args.imgsz} px, seed {args.seed}, float64 "
            f"(our loss in float32); peer: yolov5 {peer['yolov5']} on torch {peer['torch']}\n\n"
            + markdown_table(header, table(rows)) + "\n\n" + recipe_table(ours, peer))
    publish("fidelity", text, "bench.fidelity", argv, keep=not args.no_record)
    return 0


# --- the case: weights, batch, recipes ---------------------------------------------------------------------

def make_case(seed: int, nc: int, imgsz: int, batch: int) -> dict:
    """Our freshly built yolov5n in float64, a seeded batch and the settings both engines run with."""
    torch.manual_seed(seed)
    net = Model(MODEL_YAML, nc=nc).double()
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, imgsz, imgsz, generator=gen, dtype=torch.float64)
    hyp = load_hyp(None)
    adamw = {"lr0": ADAMW_LR0}
    step = {"iterations": [40, 41], "warmup_iters": 100, "epochs": EPOCHS, "batch_size": 16}
    return {
        "yaml": "yolov5n.yaml", "nc": nc, "imgsz": imgsz, "batch_size": batch, "images": images,
        "targets": random_targets(gen, batch, nc, imgsz), "hyp": hyp, "threads": 1,
        "state_dict": {k: v.clone() for k, v in net.state_dict().items()},
        "prior": head_prior(net),
        "steps": {"SGD": {"optimizer": "SGD", "hyp": {}, **step},
                  "AdamW": {"optimizer": "AdamW", "hyp": adamw, **step}},
        "schedules": {
            "SGD, 1-epoch warmup, 120 batches x 3 epochs": schedule_spec("SGD", hyp, {"warmup_epochs": 1.0}, 120, 3),
            "SGD, 1-epoch warmup, 50 batches x 4 epochs": schedule_spec("SGD", hyp, {"warmup_epochs": 1.0}, 50, 4),
            "AdamW, 3-epoch warmup, 50 batches x 30 epochs": schedule_spec("AdamW", hyp, adamw, 50, EPOCHS),
            "ours auto vs YOLOv5 AdamW, 50 batches x 30 epochs": schedule_spec("AdamW", hyp, adamw, 50, EPOCHS,
                                                                               ours="auto"),
        },
    }


def random_targets(gen: torch.Generator, batch: int, nc: int, imgsz: int) -> torch.Tensor:
    """(N, 6) [image, class, cx, cy, w, h] normalised, float32 as a loader gives them: 8 boxes per image from
    3 to 150 px (log-uniform) inside the image, plus one on the left border and one 40:1 box per image."""
    rows = []
    for b in range(batch):
        wh = torch.exp(torch.empty(8, 2).uniform_(math.log(3), math.log(150), generator=gen)) / imgsz
        xy = wh / 2 + torch.rand(8, 2, generator=gen) * (1 - wh)
        cls = torch.randint(0, nc, (8, 1), generator=gen).double()
        rows.append(torch.cat((torch.full((8, 1), float(b)), cls, xy, wh), 1))
        rows.append(torch.tensor([[b, b % nc, 0.01, 0.5, 0.02, 0.1], [b, (b + 1) % nc, 0.5, 0.5, 0.8, 0.02]]))
    return torch.cat(rows).float()


def schedule_spec(optimizer: str, hyp: dict, changes: dict, nb: int, epochs: int, ours: str = "") -> dict:
    """Settings of a traced schedule: batch 16, `nb` batches per epoch; `ours` another --optimizer for us."""
    return {"optimizer": optimizer, "hyp": {**hyp, **changes}, "nb": nb, "epochs": epochs, "batch_size": 16,
            "ours_optimizer": ours or optimizer}


def head_prior(net: Model) -> dict:
    """The head's objectness and class biases as built (YOLOv5's prior), and as our trainer sets them from
    balanced class counts (core.train: class frequencies)."""
    built = torch.cat([m.bias.detach().view(net.na, -1)[:, 4:] for m in net.model[-1].m])
    net.initialize_biases(np.ones(net.nc))
    trained = torch.cat([m.bias.detach().view(net.na, -1)[:, 4:] for m in net.model[-1].m])
    net.initialize_biases()
    return {"built": built.clone(), "balanced": trained.clone()}


def step_gradients(grads: dict, seed: int) -> list[dict]:
    """The gradients the optimizer steps use: the pass's, then a seeded random set of the same scale each."""
    gen = torch.Generator().manual_seed(seed + 1)
    second = {n: torch.randn(g.shape, generator=gen, dtype=g.dtype) * (g.std() if g.numel() > 1 else g.abs())
              for n, g in grads.items()}
    return [grads, second]


# --- our engine ---------------------------------------------------------------------------------------------

def loaded_model(case: dict) -> Model:
    torch.manual_seed(0)
    net = Model(MODEL_YAML, nc=case["nc"]).double()
    net.load_state_dict(case["state_dict"])
    return net


def ours_forward(case: dict) -> dict:
    """Forward (train mode), our loss with the trainer's gains, its assignment, the gradients, the state after."""
    net = loaded_model(case)
    net.train()
    preds = net(case["images"])
    compute_loss = ComputeLoss(net, scaled_gains(case["hyp"], net.model[-1].nl, case["nc"], case["imgsz"]))
    loss, items = compute_loss(preds, case["targets"])
    tcls, tbox, indices, anch = compute_loss.build_targets(preds, case["targets"].to(torch.float32))
    net.zero_grad()
    loss.backward()
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    return {"preds": [p.detach() for p in preds], "loss": loss.detach(), "items": items,
            "assign": [{"b": b, "a": a, "gj": gj, "gi": gi, "tbox": tb, "anch": an, "tcls": tc}
                       for (b, a, gj, gi), tb, an, tc in zip(indices, tbox, anch, tcls)],
            "grads": {n: p.grad.detach().clone() for n, p in net.named_parameters()},
            "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "bn": [bn.eps, bn.momentum], "anchors": net.model[-1].anchors.clone(), "stride": net.stride.clone()}


def beta1(group: dict) -> float:
    return float(group["momentum"] if "momentum" in group else group["betas"][0])


def ours_steps(case: dict, spec: dict, hold_beta1: bool = False) -> dict:
    """Our optimizer (groups, weight decay scaled by plan_optimizer, warmup, clip at 10) stepped with the
    case's gradients; `hold_beta1` undoes our Adam beta1 warm-up (YOLOv5 has none) after each warmup call."""
    net = loaded_model(case)
    hyp = load_hyp({**case["hyp"], **spec["hyp"]})
    plan = plan_optimizer(spec["optimizer"], hyp, case["nc"], IMAGES, spec["batch_size"], spec["epochs"])
    optimizer = build_optimizer(net, plan.name, plan.hyp["lr0"], plan.hyp["momentum"], plan.weight_decay)
    lf = lr_lambda(spec["epochs"], hyp["lrf"], False)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)  # sets initial_lr, as the trainer's
    for ni, grads in zip(spec["iterations"], case["step_grads"]):
        warmup(optimizer, ni, spec["warmup_iters"], 0, plan.hyp, lf, plan.nbs, spec["batch_size"])
        if hold_beta1:
            for g in optimizer.param_groups:
                g["betas"] = (plan.hyp["momentum"], g["betas"][1])
        for n, p in net.named_parameters():
            p.grad = grads[n].clone()
        nn.utils.clip_grad_norm_(net.parameters(), max_norm=10.0)
        optimizer.step()
        optimizer.zero_grad()
    names = {id(p): n for n, p in net.named_parameters()}
    settings = {names[id(p)]: [float(g["lr"]), float(g["weight_decay"]), beta1(g), bool(g.get("nesterov", False))]
                for g in optimizer.param_groups for p in g["params"]}
    return {"state": {k: v.detach().clone() for k, v in net.state_dict().items()}, "settings": settings}


def group_roles(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Each param group's role, read from what it holds: biases, decayed weights or norm weights."""
    bias = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    norm = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    return ["bias" if {id(p) for p in g["params"]} <= bias else "norm" if {id(p) for p in g["params"]} <= norm
            else "weight" for g in optimizer.param_groups]


def ours_schedule(spec: dict) -> dict:
    """Our per-iteration lr, momentum/beta1, accumulation, steps and EMA decay over a whole schedule: the
    optimizer plan, warmup length and step rule of core.train.setup / train_one_epoch, for the same settings."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))  # one of each group
    hyp, nb, bs = load_hyp(spec["hyp"]), spec["nb"], spec["batch_size"]
    plan = plan_optimizer(spec["ours_optimizer"], hyp, 10, nb * bs, bs, spec["epochs"])
    optimizer = build_optimizer(model, plan.name, plan.hyp["lr0"], plan.hyp["momentum"], plan.weight_decay)
    roles = group_roles(model, optimizer)
    lf = lr_lambda(spec["epochs"], hyp["lrf"], False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(model)
    warmup_iters = round(hyp["warmup_epochs"] * nb)  # core.train.setup
    accumulate, last_opt_step = plan.accumulate, -1
    trace: dict[str, list] = {k: [] for k in SCHEDULE_KEYS}
    for epoch in range(spec["epochs"]):
        for i in range(nb):
            ni = i + nb * epoch
            if warmup_iters and ni <= warmup_iters:
                accumulate = warmup(optimizer, ni, warmup_iters, epoch, plan.hyp, lf, plan.nbs, bs)
            step = ni - last_opt_step >= accumulate
            if step:
                last_opt_step = ni
                ema.updates += 1
            lrs = {r: float(g["lr"]) for r, g in zip(roles, optimizer.param_groups)}
            for r in ROLES:
                trace[f"lr_{r}"].append(lrs[r])
            trace["beta1"].append(beta1(optimizer.param_groups[roles.index("weight")]))
            trace["accumulate"].append(accumulate)
            trace["step"].append(step)
            trace["ema_decay"].append(ema.decay_at(ema.updates) if step else float("nan"))
        optimizer.step()  # no gradients: nothing moves; keeps the scheduler's order check quiet
        scheduler.step()
    return {"nw": warmup_iters, **{k: torch.tensor(v, dtype=torch.float64) for k, v in trace.items()}}


# --- the comparison -----------------------------------------------------------------------------------------

def build_rows(case: dict, ours: dict, peer: dict) -> list[Row]:
    rows = [build_row(peer["build"], len(case["state_dict"]))]
    if "forward" not in peer:
        return rows
    o, p = ours["forward"], peer["forward"]
    bn = tensor_diff(torch.tensor(o["bn"]), torch.tensor(peer["build"]["bn"]))
    rows += [Row("build", "BN eps, momentum", "2", *bn),
             Row("build", "strides", "3", *tensor_diff(o["stride"], peer["build"]["stride"])),
             Row("build", "anchors (grid units)", "18", *tensor_diff(o["anchors"], peer["build"]["anchors"])),
             prior_row("built", case["prior"]["built"], peer["prior"],
                       note="the prior alone: ours sets it, YOLOv5 adds it to the random init (+-1/sqrt(fan_in))"),
             prior_row("trainer (balanced classes)", case["prior"]["balanced"], peer["prior"],
                       why="ours: class priors from the training labels' frequencies (core.train)")]
    for level, (a, b) in enumerate(zip(o["preds"], p["preds"])):
        rows.append(Row("forward", f"P{level + 3} raw outputs (train mode)", str(b.numel()), *tensor_diff(a, b),
                        tol=1e-9))
    for k, name in enumerate(("box", "obj", "cls")):
        rows.append(Row("loss", f"{name} loss (after gains)", "1", *tensor_diff(o["items"][k], p["items"][k])))
    rows.append(Row("loss", "total x batch", "1", *tensor_diff(o["loss"], p["loss"])))
    rows += assignment_rows(o["assign"], p["assign"])
    a, r, key = dict_diff(o["grads"], p["grads"])
    rows.append(Row("gradients", "every parameter (worst relative norm)", f"{len(p['grads'])} tensors", a, r, note=key))
    a, r, key = dict_diff(o["state"], p["state"])
    rows.append(Row("forward", "state after the pass (BN running stats)", f"{len(p['state'])} tensors", a, r, note=key))
    for name, mine in ours["steps"].items():
        theirs = peer["steps"][name.split(",")[0]]
        why = "our Adam beta1 warm-up (warmup_momentum -> momentum)" if name == "AdamW" else ""
        rows += step_rows(name, mine, theirs, why)
    for name, mine in ours["schedules"].items():
        theirs = peer["schedules"][name]
        rows += trace_rows(name, mine, theirs, SCHEDULE_KEYS, schedule_why(name, mine, theirs))
    return rows


def build_row(report: dict, keys: int) -> Row:
    bad = len(report["missing"]) + len(report["unexpected"]) + len(report["shape"])
    note = "; ".join(f"{k}: {', '.join(report[k][:3])}" for k in ("missing", "unexpected", "shape") if report[k])
    return Row("build", "state-dict keys and shapes (ours loaded into YOLOv5's yolov5n.yaml)", f"{keys} tensors",
               float(bad), bad / keys, tol=0.0, note=note or "strict load")


def prior_row(what: str, ours: torch.Tensor, peer: torch.Tensor, note: str = "", why: str = "") -> Row:
    return Row("build", f"head biases: objectness and class prior, {what}", str(peer.numel()),
               *tensor_diff(ours, peer), note=note, why=why)


def step_rows(name: str, ours: dict, peer: dict, why: str) -> list[Row]:
    """Each parameter's lr, weight decay, momentum/beta1, nesterov at the last step, and the weights after."""
    rows = []
    for k, what in enumerate(("lr", "weight decay", "momentum / beta1", "nesterov")):
        o = torch.tensor([float(ours["settings"][n][k]) for n in peer["settings"]])
        p = torch.tensor([float(peer["settings"][n][k]) for n in peer["settings"]])
        rows.append(Row("optimizer step", f"{name}: {what} per parameter", f"{len(p)} parameters",
                        *tensor_diff(o, p), why=why if what.startswith("momentum") else ""))
    a, r, key = dict_diff(ours["state"], peer["state"])
    rows.append(Row("optimizer step", f"{name}: weights after 2 steps (warmup iterations 40, 41 of 100)",
                    f"{len(peer['state'])} tensors", a, r, note=f"worst: {key}" if key else "", why=why))
    return rows


def schedule_why(name: str, ours: dict, peer: dict) -> str:
    """Why a schedule may differ on purpose: warmup length, Adam beta1 warm-up, `auto`'s own recipe."""
    notes = []
    if ours["nw"] != peer["nw"]:
        notes.append(f"warmup {ours['nw']} iterations ours, {peer['nw']} YOLOv5 (its minimum of 100)")
    if name.startswith("ours auto"):
        notes.append("auto: nbs 16 (no accumulation), beta1 0.9, no raised bias lr")
    elif "AdamW" in name:
        notes.append("our Adam beta1 warm-up")
    return "; ".join(notes)


def recipe_table(ours: dict, peer: dict) -> str:
    """Per traced schedule: optimizer steps, iterations of warmup, the last EMA decay, for both engines."""
    rows = []
    for name in ours["schedules"]:
        o, p = ours["schedules"][name], peer["schedules"][name]
        last = lambda t: float(t["ema_decay"][~torch.isnan(t["ema_decay"])][-1])  # noqa: E731
        rows.append([name, f"{int(o['step'].sum())} / {int(p['step'].sum())}", f"{o['nw']} / {p['nw']}",
                     f"{last(o):.3f} / {last(p):.3f}", f"{float(o['beta1'][-1]):.3f} / {float(p['beta1'][-1]):.3f}"])
    return markdown_table(["schedule", "optimizer steps (ours / YOLOv5)", "warmup iterations", "EMA decay at the end",
                           "momentum / beta1 at the end"], rows)


if __name__ == "__main__":
    sys.exit(main())
