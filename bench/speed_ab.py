"""Interleaved A/B timings of the speed levers: `python -m bench.speed_ab` (part of `make bench`); the table is
appended to bench/results/speed_ab.md (`--no-record`: not).

Shared CPU hosts drift by tens of percent within minutes, so a lever is never judged by absolute
times from two runs. Each comparison here runs A and B alternately in one process (A, B, A, B, ...)
on the same batch from the same initial weights and reports both medians and their ratio A / B
(> 1: B is faster):
  train channels_last   one training step (forward, loss, backward, AdamW step) NCHW vs channels_last
  val channels_last     one inference batch (eval mode, 2x the training batch) NCHW vs channels_last
  SPPF pools            inference of an NCHW model, SPPF pooling in NCHW vs in channels_last (core/model/common.py)
  train bf16            one training step, fp32 vs the network under bfloat16 autocast (`core.train --bf16`)
  val bf16              one inference batch, fp32 vs bfloat16 autocast
  train SiLU            one training step, in-place SiLU (the code before 2026-12-05) vs out-of-place (the default)
  train fused optimizer one training step, per-tensor AdamW and EMA loops vs fused AdamW and foreach EMA (the default)
  val SiLU              one inference batch, in-place vs out-of-place SiLU
  threads               training steps fed by the live loader (its workers running), 1 vs 2 torch threads
  fit channels_last     with --fit-rounds N: N one-epoch `core.train.fit` runs per side, alternating
                        (train and validation seconds of the trainer itself, loader workers included)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import types
from typing import Callable

import torch

from bench.record import command_line, machine, markdown_table, record, write_json
from core.data.config import load_data_config
from core.data.loader import create_dataloader
from core.device import bf16_autocast, cpu_bf16_native, train_forward
from core.ema import ModelEMA
from core.hyp import load_hyp
from core.loss import ComputeLoss
from core.model.common import SPPF
from core.model.yolo import Model
from core.optim import build_optimizer
from core.train import TrainOptions, fit


def interleave(a: Callable[[], None], b: Callable[[], None], steps: int, warmup: int = 2) -> dict:
    """Run a, b alternately `warmup + steps` times each; medians (ms) of the last `steps` and a / b."""
    ta: list[float] = []
    tb: list[float] = []
    for i in range(warmup + steps):
        for fn, times in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    ma, mb = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
    return {"a_ms": ma, "b_ms": mb, "ratio": ma / mb, "steps": steps}


def _plain_sppf(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose SPPF blocks pool in the input's own layout (the code before the fix)."""

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, SPPF):
            m.forward = types.MethodType(forward, m)
    return model


def _with_silu_inplace(model: torch.nn.Module, inplace: bool) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.SiLU):
            m.inplace = inplace
    return model


@torch.no_grad()
def _ema_update_per_tensor(self, model: torch.nn.Module) -> None:
    """ModelEMA.update as it was before 2026-12-05: two ops per tensor instead of one foreach lerp."""
    self.updates += 1
    d = self.decay_at(self.updates)
    current = model.state_dict()
    for k, v in self.ema.state_dict().items():
        if v.dtype.is_floating_point:
            v.mul_(d).add_(current[k].detach(), alpha=1 - d)
        else:
            v.copy_(current[k])


def run(model_yaml: str, imgsz: int, batch: int, steps: int, workers: int, threads_ab: bool) -> dict:

    torch.manual_seed(0)
    torch.set_num_threads(1)  # levers compared at one fixed thread count (threads themselves: bench.train_profile --threads)
    cfg = load_data_config(None)
    hyp = load_hyp(None)
    loader, _ = create_dataloader(cfg["train"], imgsz, batch, hyp, augment=True, workers=0, shuffle=True, nc=cfg["nc"])
    imgs_u8, targets, _, _ = next(iter(loader))
    imgs = imgs_u8.float() / 255
    base = Model(model_yaml, nc=cfg["nc"])
    base.initialize_biases()
    out: dict = {"model": model_yaml, "imgsz": imgsz, "batch": batch, "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    # a training step as the trainer's (forward, loss, backward, clip, AdamW, EMA): same weights, same batch,
    # each side with its own model, optimizer and EMA
    def trainer(fmt: torch.memory_format = torch.contiguous_format, bf16: bool = False, silu_inplace: bool = False,
                fused: bool = True) -> Callable[[], None]:
        net = _with_silu_inplace(copy.deepcopy(base), silu_inplace).to(memory_format=fmt).train()
        loss_fn = ComputeLoss(net, hyp)
        opt = build_optimizer(net, "AdamW", 0.001, 0.9, 0.0005)
        ema = ModelEMA(net)
        if not fused:
            for group in opt.param_groups:
                group["fused"] = group["foreach"] = False
            ema.update = types.MethodType(_ema_update_per_tensor, ema)
        x = imgs.contiguous(memory_format=fmt)

        def step() -> None:
            loss, _ = loss_fn(train_forward(net, x, bf16), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=10.0)
            opt.step()
            opt.zero_grad()
            ema.update(net)
        return step
    out["train channels_last"] = interleave(trainer(), trainer(torch.channels_last), steps)
    out["train bf16"] = interleave(trainer(), trainer(bf16=True), steps)
    out["train SiLU"] = interleave(trainer(silu_inplace=True), trainer(), steps)
    out["train fused optimizer"] = interleave(trainer(fused=False), trainer(), steps)
    out["bf16 in hardware"] = cpu_bf16_native()[1]

    # inference, NCHW vs channels_last, and NCHW with SPPF pooling in NCHW vs in channels_last
    vimgs = torch.cat((imgs, imgs.flip(3)))  # the validation batch is twice the training batch
    nchw = copy.deepcopy(base).eval()
    cl = copy.deepcopy(base).eval().to(memory_format=torch.channels_last)
    vimgs_cl = vimgs.contiguous(memory_format=torch.channels_last)
    plain = _plain_sppf(nchw)
    with torch.no_grad():
        out["val channels_last"] = interleave(lambda: nchw(vimgs), lambda: cl(vimgs_cl), steps)
        out["SPPF pools"] = interleave(lambda: plain(vimgs), lambda: nchw(vimgs), steps)
        inplace = _with_silu_inplace(copy.deepcopy(nchw), True)
        out["val SiLU"] = interleave(lambda: inplace(vimgs), lambda: nchw(vimgs), steps)

        def bf16_inference() -> None:
            with bf16_autocast():
                nchw(vimgs)
        out["val bf16"] = interleave(lambda: nchw(vimgs), bf16_inference, steps)
        out["max_abs_diff channels_last vs NCHW (inference)"] = float((nchw(vimgs)[0] - cl(vimgs_cl)[0]).abs().max())
        out["SPPF pools bit-identical"] = bool(torch.equal(plain(vimgs)[0], nchw(vimgs)[0]))

    # torch threads against loader workers: steps fed by the live loader, data wait included
    if threads_ab:
        live, _ = create_dataloader(cfg["train"], imgsz, batch, hyp, augment=True, workers=workers, shuffle=True,
                                    nc=cfg["nc"])
        net = copy.deepcopy(base).to(memory_format=torch.channels_last).train()
        loss_fn = ComputeLoss(net, hyp)
        opt = build_optimizer(net, "AdamW", 0.001, 0.9, 0.0005)
        batches = iter(_forever(live))

        def fed_step(n: int) -> Callable[[], None]:
            def step() -> None:
                torch.set_num_threads(n)
                x, t, _, _ = next(batches)
                loss, _ = loss_fn(net(x.contiguous(memory_format=torch.channels_last).float() / 255), t)
                loss.backward()
                opt.step()
                opt.zero_grad()
            return step
        out["threads"] = {**interleave(fed_step(1), fed_step(2), steps), "workers": workers}
        torch.set_num_threads(1)
    return out


def fit_ab(model_yaml: str, imgsz: int, batch: int, workers: int, rounds: int) -> dict:
    """One-epoch fits, NCHW and channels_last alternately: medians of train and val seconds, and A / B."""

    times: dict[bool, dict[str, list[float]]] = {cl: {"train": [], "val": []} for cl in (False, True)}
    for _ in range(rounds):
        for cl in (False, True):
            opts = TrainOptions(epochs=1, batch_size=batch, imgsz=imgsz, workers=workers, save=False, progress=False,
                                close_mosaic=0, channels_last=cl)
            row = fit(None, model_yaml, None, opts).history[-1]
            times[cl]["train"].append(row["train_seconds"])
            times[cl]["val"].append(row["val_seconds"])
    out = {"rounds": rounds}
    for k in ("train", "val"):
        a, b = statistics.median(times[False][k]), statistics.median(times[True][k])
        out[k] = {"a_s": a, "b_s": b, "ratio": a / b}
    return out


def _forever(loader):
    while True:
        yield from loader


LEVERS = ("train channels_last", "val channels_last", "SPPF pools", "train bf16", "val bf16", "train SiLU",
          "train fused optimizer", "val SiLU", "threads")


def table(r: dict, steps: int) -> str:
    """The A/B results as markdown: a line naming the setting, the levers' table, the two correctness checks."""
    rows = [(k, f"{r[k]['a_ms']:.1f}", f"{r[k]['b_ms']:.1f}", f"{r[k]['ratio']:.2f}") for k in LEVERS if k in r]
    if "fit channels_last" in r:
        f = r["fit channels_last"]
        rows += [(f"fit {k} epoch (s)", f"{f[k]['a_s']:.1f}", f"{f[k]['b_s']:.1f}", f"{f[k]['ratio']:.2f}")
                 for k in ("train", "val")]
    return "\n".join([
        f"A/B interleaved, {steps} steps each, {r['model']} imgsz {r['imgsz']} batch {r['batch']}, "
        f"CPU capability {r['cpu_capability']}", "",
        markdown_table(["lever", "A ms", "B ms", "A / B"], rows), "",
        f"bf16: {r['bf16 in hardware']}; inference max |NCHW - channels_last| "
        f"{r['max_abs_diff channels_last vs NCHW (inference)']:.2e}; "
        f"SPPF pools bit-identical: {r['SPPF pools bit-identical']}"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed_ab", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="studies/models/yolov5n.yaml")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed steps of each side (after 2 warm-up steps each)")
    p.add_argument("--workers", type=int, default=2, help="loader workers of the threads comparison")
    p.add_argument("--no-threads", action="store_true", help="skip the threads comparison")
    p.add_argument("--fit-rounds", type=int, default=0, help="one-epoch fits per side, NCHW vs channels_last (0 = none)")
    p.add_argument("--out", default="runs/bench/speed_ab.json")
    p.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/speed_ab.md")
    args = p.parse_args(argv)
    meta = machine()
    r = run(args.model, args.imgsz, args.batch_size, args.steps, args.workers, not args.no_threads)
    if args.fit_rounds:
        r["fit channels_last"] = fit_ab(args.model, args.imgsz, args.batch_size, args.workers, args.fit_rounds)
    text = table(r, args.steps)
    print(text)
    write_json(r, args.out)
    if not args.no_record:
        record("speed_ab", text, meta, command_line("bench.speed_ab", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
