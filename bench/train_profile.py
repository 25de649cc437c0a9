"""Where a training step and an epoch spend their time: `python -m bench.train_profile` (part of `make bench`).

Builds the trainer's pieces from core's public functions (model, loss with the trainer's gain scaling,
optimizer as `--optimizer auto` resolves it, EMA, train and val loaders, checkpoint writer) and runs one
epoch of them with a timer around each phase:
  data wait       next(loader): what the loader workers did not hide
  forward         model(imgs) in training mode (uint8 -> float included)
  loss            ComputeLoss (target assignment included)
  backward        loss.backward()
  optimizer+EMA   grad-norm clip, optimizer.step, zero_grad, EMA update
then one validation pass split into data wait, inference, val loss, NMS, matching and AP, then the
two checkpoint writes of an improved epoch (best.pt, last.pt with optimizer state).
`core.val.validate` runs first, timed whole (its loader workers start then, once per run as in the trainer);
the split pass follows with the workers running, as in every later epoch.
Not the trainer itself (core/train.py): the same work in the same order, without its logging,
warm-up lr ramp or progress bar. Step figures are medians over the steps after `--warmup`.
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from bench.record import write_json

TRAIN_PHASES = ("data wait", "forward", "loss", "backward", "optimizer+EMA")
VAL_PHASES = ("data wait", "inference", "val loss", "NMS", "matching", "AP")


class Timer:
    """Accumulates wall time per phase; `lap(name)` charges the time since the previous lap to name."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.total: dict[str, float] = defaultdict(float)
        self.steps: dict[str, list[float]] = defaultdict(list)
        self.t = time.perf_counter()

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.t = time.perf_counter()

    def lap(self, name: str, record_step: bool = False) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.total[name] += now - self.t
        if record_step:
            self.steps[name].append(now - self.t)
        self.t = now


def profile(data: str | None, model_yaml: str, imgsz: int, batch: int, workers: int, batches: int,
            warmup: int, threads: int, device: str = "cpu", ckpt_dir: str | Path = "runs/bench",
            channels_last: bool = False, bf16: str | None = None) -> dict:
    from core.boxes import xywh2xyxy
    from core.checkpoint import save_checkpoint
    from core.cpu import training_threads, workers_yield
    from core.data.config import load_data_config
    from core.data.loader import create_dataloader
    from core.device import bf16_autocast, resolve_bf16, select_device, train_forward
    from core.ema import ModelEMA
    from core.hyp import load_hyp
    from core.loss import ComputeLoss, scaled_gains
    from core.metrics import ap_per_class, match_predictions
    from core.model.yolo import Model
    from core.nms import non_max_suppression
    from core.optim import build_optimizer, resolve_auto
    from core.train import TrainOptions
    from core.val import validate

    torch.manual_seed(0)
    dev = select_device(device, batch)
    use_bf16, bf16_why = resolve_bf16(bf16 or TrainOptions.bf16, dev)  # the trainer's default unless given
    low_priority = False
    if dev.type == "cpu":  # the trainer's rule (core/cpu.py)
        plan = training_threads(threads, workers)
        torch.set_num_threads(plan.threads)
        low_priority = workers_yield(plan, workers)
    t_setup = time.perf_counter()
    cfg = load_data_config(data)
    nc = cfg["nc"]
    hyp = load_hyp(None)
    train_loader, train_set = create_dataloader(cfg["train"], imgsz, batch, hyp, augment=True, workers=workers,
                                                shuffle=True, nc=nc, low_priority=low_priority)
    val_loader, val_set = create_dataloader(cfg["val"], imgsz, batch * 2, hyp, augment=False, workers=workers, nc=nc)
    net = Model(model_yaml, nc=nc)
    net.initialize_biases()
    fmt = torch.channels_last if channels_last else torch.contiguous_format  # the trainer's --channels-last
    net = net.to(dev, memory_format=fmt)
    compute_loss = ComputeLoss(net, scaled_gains(hyp, net.model[-1].nl, nc, imgsz))  # the trainer's gains
    steps = math.ceil(len(train_set) / batch) * 30  # as for a 30-epoch run
    name, hyp_run = resolve_auto("auto", hyp, nc, steps)
    nbs = batch if name == "AdamW" else 64
    accumulate = max(round(nbs / batch), 1)
    optimizer = build_optimizer(net, name, hyp_run["lr0"], hyp_run["momentum"], hyp["weight_decay"] * batch * accumulate / nbs)
    ema = ModelEMA(net)
    setup_s = time.perf_counter() - t_setup

    # --- one training epoch -------------------------------------------------------------------------
    timer = Timer(dev)
    net.train()
    n = 0
    it = iter(train_loader)
    nb = len(train_loader) if batches <= 0 else min(batches, len(train_loader))
    t_epoch = time.perf_counter()
    timer.start()
    for i in range(nb):
        rec = i >= warmup
        imgs, targets, _, _ = next(it)
        timer.lap("data wait", rec)
        pred = train_forward(net, imgs.to(dev, non_blocking=True, memory_format=fmt).float() / 255, use_bf16)
        timer.lap("forward", rec)
        loss, _ = compute_loss(pred, targets.to(dev))
        timer.lap("loss", rec)
        loss.backward()
        timer.lap("backward", rec)
        if (i + 1) % accumulate == 0:
            nn.utils.clip_grad_norm_(net.parameters(), max_norm=10.0)
            optimizer.step()
            optimizer.zero_grad()
            ema.update(net)
        timer.lap("optimizer+EMA", rec)
        n += imgs.shape[0]
    del it
    train_s = time.perf_counter() - t_epoch

    # --- validation as the trainer runs it, then again split by phase (its workers now warm) ---------------
    model = ema.ema.eval()
    t0 = time.perf_counter()
    vm = validate(model, val_loader, compute_loss=compute_loss, names=cfg["names"], progress=False, bf16=use_bf16)
    val_s = time.perf_counter() - t0

    vt = Timer(dev)
    iouv = torch.linspace(0.5, 0.95, 10, device=dev)
    stats = []
    t_val = time.perf_counter()
    with torch.no_grad():
        vt.start()
        for imgs, targets, _, _ in val_loader:
            vt.lap("data wait")
            imgs = imgs.to(dev, memory_format=fmt).float() / 255
            targets = targets.to(dev)
            with bf16_autocast(use_bf16):
                pred, raw = model(imgs)
            vt.lap("inference")
            compute_loss([r.float() for r in raw], targets)
            vt.lap("val loss")
            out = non_max_suppression(pred.float(), 0.001, 0.6, max_det=300)
            vt.lap("NMS")
            h, w = imgs.shape[2:]
            scale = torch.tensor([w, h, w, h], device=dev, dtype=torch.float32)
            for si, det in enumerate(out):
                lab = targets[targets[:, 0] == si, 1:].float()
                labels = torch.cat((lab[:, :1], xywh2xyxy(lab[:, 1:5]) * scale), 1)
                stats.append((match_predictions(det, labels, iouv).cpu(), det[:, 4].cpu(), det[:, 5].cpu(), labels[:, 0].cpu()))
            vt.lap("matching")
        tp, conf, pcls, tcls = (torch.cat(x, 0).numpy() for x in zip(*stats))
        ap_per_class(tp, conf, pcls, tcls)
        vt.lap("AP")
    val_split_s = time.perf_counter() - t_val

    # --- checkpoint writes of an improved epoch -------------------------------------------------------
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)  # on the disk runs/ is on, as the trainer's (not /tmp)
    with tempfile.TemporaryDirectory(dir=ckpt_dir) as tmp:
        t0 = time.perf_counter()
        common = dict(ema=ema.ema, updates=ema.updates, hyp=hyp, metrics={"mAP50-95": vm["mAP50-95"]}, epoch=0,
                      best_fitness=vm["fitness"])
        save_checkpoint(Path(tmp) / "best.pt", net, **common)
        save_checkpoint(Path(tmp) / "last.pt", net, optimizer=optimizer, **common)
        ckpt_s = time.perf_counter() - t0

    step = {k: statistics.median(timer.steps[k]) * 1e3 if timer.steps[k] else float("nan") for k in TRAIN_PHASES}
    return {"model": model_yaml, "channels_last": channels_last, "bf16": f"{'on' if use_bf16 else 'off'} ({bf16_why})", "imgsz": imgsz, "batch": batch, "workers": workers, "threads": torch.get_num_threads(),
            "optimizer": name, "accumulate": accumulate, "train_batches": nb, "train_images": n,
            "setup_s": setup_s, "step_ms": step, "epoch_train_s": {k: timer.total[k] for k in TRAIN_PHASES},
            "train_s": train_s, "train_images_per_s": n / train_s, "val_images": len(val_set),
            "val_split_s": {k: vt.total[k] for k in VAL_PHASES}, "val_split_total_s": val_split_s,
            "validate_s": val_s, "validate_speed_ms": vm["speed_ms"], "checkpoint_s": ckpt_s}


def format_profile(r: dict) -> str:
    step_total = sum(v for v in r["step_ms"].values() if v == v)
    epoch_total = r["train_s"] + r["val_split_total_s"] + r["checkpoint_s"]
    layout = "channels_last" if r.get("channels_last") else "NCHW"
    lines = [f"profile: {r['model']} ({layout}, bf16 autocast {r.get('bf16', 'off')}) imgsz {r['imgsz']} batch {r['batch']}, {r['workers']} loader workers, "
             f"{r['threads']} torch threads, {r['optimizer']} (accumulate {r['accumulate']}); "
             f"{r['train_batches']} batches, {r['train_images_per_s']:.1f} train img/s; setup {r['setup_s']:.1f} s",
             f"{'phase':24s} {'step ms':>8s} {'% step':>7s} {'epoch s':>8s} {'% epoch':>8s}"]
    for k in TRAIN_PHASES:
        s = r["epoch_train_s"][k]
        lines.append(f"{'train ' + k:24s} {r['step_ms'][k]:8.1f} {100 * r['step_ms'][k] / step_total:7.1f} "
                     f"{s:8.2f} {100 * s / epoch_total:8.1f}")
    for k in VAL_PHASES:
        s = r["val_split_s"][k]
        lines.append(f"{'val ' + k:24s} {'':8s} {'':7s} {s:8.2f} {100 * s / epoch_total:8.1f}")
    lines.append(f"{'checkpoints (best+last)':24s} {'':8s} {'':7s} {r['checkpoint_s']:8.2f} {100 * r['checkpoint_s'] / epoch_total:8.1f}")
    lines.append(f"{'total':24s} {step_total:8.1f} {100.0:7.1f} {epoch_total:8.2f} {100.0:8.1f}")
    lines.append(f"(val: {r['val_images']} images; the split pass {r['val_split_total_s']:.2f} s with its loader workers "
                 f"running, core.val.validate before it {r['validate_s']:.2f} s including their start, which a run pays once)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_profile", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="data yaml (default: the built-in dataset)")
    p.add_argument("--model", default="studies/models/yolov5n.yaml")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=0, help="training batches (0 = one whole epoch)")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the per-step medians")
    p.add_argument("--threads", type=int, default=0, help="CPU torch threads (0 = the trainer's rule)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true", help="model and batches NHWC (the trainer's flag)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default=None, help="the trainer's flag (default: its default)")
    p.add_argument("--out", default="runs/bench/profile.json")
    args = p.parse_args(argv)
    r = profile(args.data, args.model, args.imgsz, args.batch_size, args.workers, args.batches, args.warmup,
                args.threads, args.device, Path(args.out).parent, args.channels_last, args.bf16)
    print(format_profile(r))
    write_json(r, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
