"""Engine benchmark: `python -m bench.engine` (make bench). Prints a table of figures, writes them to JSON and
appends the table to bench/results/engine.md (`--no-record`: not).

Train throughput is measured in steady state (after warm-up batches) with data loading included:
the timer spans loader iteration, forward, loss, backward and the optimizer step. Beside it, the
ceiling: what the model's convs alone, and its whole forward+backward on a fixed batch, reach on this CPU
(`training_ceiling`), so the training figure can be read against what the kernels allow.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch
from torch import nn

from bench.record import command_line, machine, markdown_table, record, write_json
from core.data.config import load_data_config
from core.data.loader import create_dataloader
from core.hyp import load_hyp
from core.loss import ComputeLoss
from core.model.info import model_info
from core.model.yolo import Model
from core.optim import build_optimizer
from core.val import validate


def conv_throughput(seconds: float = 3.0) -> float:
    """GFLOP/s of a large 3x3 Conv2d forward+backward: what this machine's convs can do at best."""
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False)
    x = torch.randn(8, 128, 64, 64, requires_grad=True)
    flops = 2 * 128 * 128 * 9 * 64 * 64 * 8 * 3  # forward MACs*2, backward ~2x forward
    return flops / _seconds_per_call(lambda: conv(x).sum().backward(), seconds, warmup=2) / 1e9


def _seconds_per_call(fn, seconds: float, warmup: int = 3) -> float:
    """Mean wall time of fn() over `seconds`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def model_convs(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv2d, torch.Size]]:
    """Every Conv2d of the model with the input shape it sees when the model runs on x."""
    seen: list[tuple[nn.Conv2d, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.append((m, inp[0].shape)))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def training_ceiling(model_yaml: str, imgsz: int, batch: int, nc: int = 10, seconds: float = 4.0,
                     compile_model: bool = False) -> dict:
    """The most training GFLOP/s this model can reach here, before data, loss and optimizer cost anything.

    FLOPs are counted as the effective figure is (3 x the model's forward FLOPs), so each value compares
    directly with a training run's train_gflop_per_s: its convolutions alone (each conv's forward+backward
    timed in isolation at the shape it has in the model), then the whole model's forward+backward on one
    fixed batch, eager and (compile_model) under torch.compile, which fuses BatchNorm and SiLU.
    """

    torch.manual_seed(0)
    model = Model(model_yaml, nc=nc).train()
    x = torch.randn(batch, 3, imgsz, imgsz)
    train_flops = model_info(model, imgsz)["gflops"] * 1e9 * batch * 3
    conv_seconds = conv_flops = 0.0
    for conv, shape in model_convs(model, x):
        twin = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         groups=conv.groups, bias=conv.bias is not None)
        xi = torch.randn(shape, requires_grad=shape[1] != 3)  # the image itself needs no gradient
        out_numel = twin(xi).numel()
        conv_flops += 2 * out_numel * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1] * 3
        conv_seconds += _seconds_per_call(lambda: twin(xi).sum().backward(), seconds / 20)

    def forward_backward(net: nn.Module):
        def step() -> None:
            model.zero_grad(set_to_none=True)
            sum(p.sum() for p in net(x)).backward()
        return step

    figures = {"ceiling_convs_gflop_per_s": conv_flops / conv_seconds / 1e9,
               "ceiling_convs_share_of_model_flops": conv_flops / train_flops,
               "ceiling_eager_gflop_per_s": train_flops / _seconds_per_call(forward_backward(model), seconds) / 1e9}
    if compile_model:
        compiled = torch.compile(model, dynamic=False)
        figures["ceiling_compiled_gflop_per_s"] = (
            train_flops / _seconds_per_call(forward_backward(compiled), seconds) / 1e9)
    return figures


def train_throughput(model_yaml: str, imgsz: int, batch: int, batches: int, warmup: int, workers: int,
                     channels_last: bool = False) -> dict:

    torch.manual_seed(0)
    cfg = load_data_config(None)
    hyp = load_hyp(None)
    model = Model(model_yaml, nc=cfg["nc"])
    info = model_info(model, imgsz)
    fmt = torch.channels_last if channels_last else torch.contiguous_format  # as the trainer (--channels-last)
    model = model.to(memory_format=fmt)
    loader, _ = create_dataloader(cfg["train"], imgsz, batch, hyp, augment=True, workers=workers, shuffle=True,
                                  nc=cfg["nc"])
    compute_loss = ComputeLoss(model, hyp)
    opt = build_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    model.train()
    seen, t0, it = 0, None, iter(loader)
    for i in range(warmup + batches):
        try:
            imgs, targets, _, _ = next(it)
        except StopIteration:
            it = iter(loader)
            imgs, targets, _, _ = next(it)
        loss, _ = compute_loss(model(imgs.contiguous(memory_format=fmt).float() / 255), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i == warmup - 1:
            t0 = time.perf_counter()
        elif i >= warmup:
            seen += imgs.shape[0]
    train_ips = seen / (time.perf_counter() - t0)
    val_loader, val_set = create_dataloader(cfg["val"], imgsz, batch * 2, hyp, augment=False, workers=workers, nc=cfg["nc"])
    t1 = time.perf_counter()
    validate(model.eval(), val_loader, progress=False)
    val_ips = len(val_set) / (time.perf_counter() - t1)
    achieved = train_ips * info["gflops"] * 3  # forward + backward ~ 3x forward FLOPs
    return {"model": model_yaml, "channels_last": channels_last, "imgsz": imgsz, "batch": batch,
            "train_images_per_s": train_ips,
            "val_images_per_s": val_ips, "model_gflops": info["gflops"], "params": info["params"],
            "train_gflop_per_s": achieved}


def table(figures: dict) -> str:
    """The figures as a markdown table (floats to 4 significant digits)."""
    return markdown_table(["figure", "value"], [(k, f"{v:.4g}" if isinstance(v, float) else v)
                                               for k, v in figures.items()])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__)
    p.add_argument("--model", default="studies/models/yolov5n.yaml")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=20, help="timed batches after warm-up")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--channels-last", action="store_true", help="model and batches NHWC (the trainer's flag)")
    p.add_argument("--compile-ceiling", action="store_true",
                   help="also time the model's forward+backward under torch.compile (about a minute to compile)")
    p.add_argument("--out", default="runs/bench/core.json")
    p.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/engine.md")
    args = p.parse_args(argv)
    meta = machine()
    figures = train_throughput(args.model, args.imgsz, args.batch_size, args.batches, args.warmup, args.workers,
                               args.channels_last)
    figures["torch_threads"] = torch.get_num_threads()
    figures["conv_gflop_per_s"] = conv_throughput()
    figures["train_vs_conv_ratio"] = figures["train_gflop_per_s"] / figures["conv_gflop_per_s"]
    ceiling = training_ceiling(args.model, args.imgsz, args.batch_size, compile_model=args.compile_ceiling)
    figures.update(ceiling)
    for k in [k for k in ceiling if k.endswith("_gflop_per_s")]:  # each ceiling as a share of the conv peak
        figures[k.replace("_gflop_per_s", "_vs_conv_ratio")] = ceiling[k] / figures["conv_gflop_per_s"]
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["peak_rss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest loader worker
    text = table(figures)
    print(text)
    write_json(figures, args.out)
    if not args.no_record:
        record("engine", text, meta, command_line("bench.engine", argv))


if __name__ == "__main__":
    main()
