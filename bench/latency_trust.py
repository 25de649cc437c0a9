"""`python -m bench.latency_trust RUN_DIR`: why two identical architectures time differently. A benchmark, not a test.

A pruning run's "After layers" and "After finetune" models have the same layers and widths, so the same
FLOPs; any timing gap between them comes from the values they compute with or from the measurement. This
command loads the stage checkpoints of one prune.pipeline run folder and, per stage, counts subnormal floats
(0 < |x| < 1.18e-38 in float32: x86 multiplies them on a slow microcode path unless FTZ/DAZ are on)
- in the parameters and buffers as saved,
- in the fused model's weights (BN folded into the conv: gamma / sqrt(var + eps) can push a small weight
  under the normal range), and
- in the activations of one forward pass on a random image (every module's output),
(`--inject S`: plus a copy of the last stage with the share S of every conv's weights made subnormal, to see
the mechanism's size on this CPU), then times every stage interleaved (prune.measure.interleaved_latency: shuffled rounds after warm-up) in three
conditions side by side in one loop: PyTorch without flushing (torch's default), PyTorch with subnormals
flushed (torch.set_flush_denormal), and the fused model with its subnormal weights set to zero, without
flushing. With `--onnx` the stages are also exported and run in onnxruntime with and without its
`session.set_denormal_as_zero`. `--repeats K` then times the last stage against an exact copy of itself (a
deepcopy in PyTorch, a second session on the same file in onnxruntime) in K separate interleaved loops: any
gap between the two is the measurement's own. The tables (median, p25-p75, ms) are appended to
bench/results/latency_trust.md (`--no-record`: not).
"""
from __future__ import annotations

import argparse
import copy
import functools
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench.prune_table import recipe
from bench.record import command_line, machine, machine_line, markdown_table, record
from core.checkpoint import model_from_checkpoint
from core.cli import main_guard
from core.export import export_onnx
from prune.measure import interleaved_latency, subnormal_count, zero_subnormals
from prune.records import STAGES

CONDITIONS = ("torch", "torch flushed", "torch zeroed weights")


def activation_subnormals(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(subnormal values, all values) over every leaf module's float output in one forward pass, not flushed."""
    counts = [0, 0]

    def hook(_m, _inp, out):
        for t in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                counts[0] += int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())
                counts[1] += t.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    torch.set_flush_denormal(False)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counts[0], counts[1]


def with_flush(flush: bool, fn: Callable[[], object]) -> Callable[[], object]:
    """fn with the thread's FTZ/DAZ set as asked just before each call (the timing loop flushes by default)."""
    def call():
        torch.set_flush_denormal(flush)
        return fn()
    return call


def ort_call(path: Path, threads: int, denormal_as_zero: bool) -> Callable[[], object]:
    import onnxruntime as ort  # optional package (the `export` extra)

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.set_denormal_as_zero", "1" if denormal_as_zero else "0")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    feed = {inp.name: torch.rand(*inp.shape).numpy()}
    return with_flush(False, functools.partial(session.run, None, feed))


@torch.no_grad()
def with_subnormal_weights(model: nn.Module, share: float) -> nn.Module:
    """A copy whose every conv has its `share` smallest |weights| replaced by +-1e-40: still subnormal after BN
    folding multiplies them by gamma / sqrt(var + eps) (1e-40 x 100 < 1.18e-38), so the fused model has them too."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.view(-1)
            idx = torch.argsort(w.abs())[: int(share * w.numel())]
            w[idx] = torch.where(w[idx] < 0, -1e-40, 1e-40)
    return out


def op_level(threads: int, runs: int, warmup: int) -> str:
    """One 3x3 conv (64 -> 64 channels, 80x80) and one multiply with normal vs subnormal operands, each flushed
    and not, interleaved: whether this CPU pays for subnormals at all."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.rand(1, 64, 80, 80)
    w_sub = conv.weight.detach() * 1e-39
    ops = {"conv, normal operands": lambda: conv(x), "conv, subnormal input": lambda: conv(x * 1e-39),
           "conv, subnormal weights": lambda: nn.functional.conv2d(x, w_sub, None, padding=1),
           "multiply, normal": lambda: x * 0.5, "multiply, subnormal": lambda: (x * 1e-39) * 0.5}
    calls = {f"{k}|{f}": with_flush(f, fn) for k, fn in ops.items() for f in (False, True)}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            lat = interleaved_latency(calls, warmup, runs)
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)
    rows = [[k, lat[f"{k}|False"].text("{:.3f}"), lat[f"{k}|True"].text("{:.3f}"),
             f"{lat[f'{k}|False'].median / lat[f'{k}|True'].median:.2f}"] for k in ops]
    return (f"single operations, {runs} interleaved rounds, {threads} thread(s) (the subnormal operands are made "
            f"inside the timed call, as a model's activations are)\n\n"
            + markdown_table(["operation", "not flushed, ms", "flushed, ms", "not / flushed"], rows))


def identical_copies(model: nn.Module, imgsz: int, threads: int, runs: int, warmup: int, repeats: int,
                    onnx: bool) -> str:
    """K interleaved loops over the model and an exact copy (and, with onnx, two sessions on one file): the ratio
    of the copies' medians per loop, which would be 1.00 with a perfect clock."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, imgsz, imgsz)
    fused = copy.deepcopy(model).fuse()
    calls = {"torch": with_flush(False, functools.partial(fused, x)),
             "torch copy": with_flush(False, functools.partial(copy.deepcopy(fused), x))}
    if onnx:
        path = export_onnx(model, Path(tempfile.mkdtemp(prefix="latency-trust-")) / "m.onnx", imgsz=imgsz)
        calls["onnxruntime"] = ort_call(path, threads, False)
        calls["onnxruntime copy"] = ort_call(path, threads, False)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for k in range(repeats):
            lat = interleaved_latency(calls, warmup, runs)
            pairs = [("torch", "torch copy")] + ([("onnxruntime", "onnxruntime copy")] if onnx else [])
            rows.append([k + 1, *(f"{lat[a].text()} vs {lat[b].text()}: {lat[b].median / lat[a].median:.3f}"
                                  for a, b in pairs)])
    finally:
        torch.set_num_threads(before)
    header = ["loop", "PyTorch: model vs its copy, ms: copy / model",
              *(["onnxruntime: session vs a second session, ms: second / first"] if onnx else [])]
    return (f"the same model timed against an exact copy of itself, {repeats} separate loops of {runs} interleaved "
            f"rounds after {warmup} warm-up rounds, batch 1, {imgsz} px, {threads} thread(s)\n\n"
            + markdown_table(header, rows))


def run(run_dir: Path, imgsz: int, threads: int, runs: int, warmup: int, onnx: bool,
        inject: float = 0.0) -> tuple[str, dict]:
    stages = [s for s in STAGES if (run_dir / f"{s}.pt").is_file()]
    if not stages:
        raise FileNotFoundError(f"{run_dir}: no stage checkpoints (<stage>.pt); run python -m prune.pipeline first")
    torch.manual_seed(0)
    x = torch.rand(1, 3, imgsz, imgsz)
    counts, calls = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="latency-trust-"))
    models = {s: model_from_checkpoint(run_dir / f"{s}.pt").float().eval() for s in stages}
    if inject:  # the mechanism on this CPU: the last stage with a share of its weights made subnormal
        stages.append(f"{stages[-1]}, {inject:.0%} of weights subnormal")
        models[stages[-1]] = with_subnormal_weights(models[stages[-2]], inject)
    for stage in stages:
        model = models[stage]
        fused = copy.deepcopy(model).fuse()
        zeroed = copy.deepcopy(fused)
        counts[stage] = {"saved": subnormal_count(model), "fused": zero_subnormals(zeroed),
                         "activations": activation_subnormals(fused, x)}
        calls[f"{stage}|torch"] = with_flush(False, functools.partial(fused, x))
        calls[f"{stage}|torch flushed"] = with_flush(True, functools.partial(fused, x))
        calls[f"{stage}|torch zeroed weights"] = with_flush(False, functools.partial(zeroed, x))
        if onnx:
            path = export_onnx(model, tmp / f"{stages.index(stage)}.onnx", imgsz=imgsz)
            calls[f"{stage}|onnxruntime"] = ort_call(path, threads, False)
            calls[f"{stage}|onnxruntime flushed"] = ort_call(path, threads, True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        lat = interleaved_latency(calls, warmup, runs)
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)  # the last call may have been a flushed one
    conditions = [*CONDITIONS, *(("onnxruntime", "onnxruntime flushed") if onnx else ())]
    rows = []
    for stage in stages:
        c = counts[stage]
        n_act, all_act = c["activations"]
        rows.append([stage, f"{c['saved']:,}", f"{c['fused']:,}", f"{n_act:,} of {all_act:,}",
                     *(lat[f"{stage}|{k}"].text() for k in conditions)])
    header = ["stage", "subnormal values saved", "in fused weights", "in activations",
              *(f"{k}, ms" for k in conditions)]
    text = (f"{run_dir} ({recipe(run_dir)}): batch 1, {imgsz} px, {threads} thread(s), {runs} interleaved rounds after {warmup} "
            f"warm-up rounds; median (p25-p75)\n\n" + markdown_table(header, rows))
    last = models[[s for s in stages if s in STAGES][-1]]
    return text, {"counts": counts, "latency": {k: vars(v) for k, v in lat.items()}, "last": last}


@main_guard("bench.latency_trust")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency_trust", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a prune.pipeline run folder (runs/prune/NAME)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--onnx", action="store_true", help="also time the stages in onnxruntime")
    p.add_argument("--inject", type=float, default=0.0,
                   help="add a copy of the last stage with this share of each conv's weights set subnormal")
    p.add_argument("--repeats", type=int, default=0, help="loops timing the last stage against an exact copy")
    p.add_argument("--no-record", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    meta = machine()
    text, figures = run(args.run, args.imgsz, args.threads, args.runs, args.warmup, args.onnx, args.inject)
    text += "\n\n" + op_level(args.threads, args.runs, args.warmup)
    if args.repeats:
        text += "\n\n" + identical_copies(figures["last"], args.imgsz, args.threads, args.runs, args.warmup,
                                           args.repeats, args.onnx)
    print(f"{machine_line(meta)}\n{text}")
    if not args.no_record:
        record("latency_trust", text, meta, command_line("bench.latency_trust", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
