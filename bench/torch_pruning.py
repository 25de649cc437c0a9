"""`python -m bench.torch_pruning` (make bench-tp): our pruner beside Torch-Pruning at equal GFLOPs. A benchmark, not a test.

Both sides start from the same trained checkpoint (`--weights`) with no sparse training, so they prune
exactly the same weights:
- ours: the pipeline's channel stage (global |gamma| threshold at `--global-percent`, coupled masks,
  beta compensation, kept channels rounded to the machine's conv block) then its layer stage (`--shortcuts`
  lowest-|gamma| shortcut Bottlenecks removed), through prune.pipeline.Pipeline's own stage functions;
- Torch-Pruning (DepGraph, `torch_pruning`): `BasePruner` (MetaPruner) with global pruning, `--tp-steps`
  iterative steps, Detect's output convs in ignored_layers, round_to = ours, and its default group
  importance normaliser; one row with `BNScaleImportance` (network slimming's score) and one with
  `MagnitudeImportance(p=1)` (L1). Its pruning ratio is bisected until its GFLOPs (thop, at
  `--latency-imgsz`) are within `--tolerance` of ours.
Every pruned model is then finetuned the same way: the pipeline's finetune (`core.train.fit`, its finetune
hyp, optimizer, `--finetune-epochs`, imgsz, batch, seed, built-in data unless `--data`), and the best
checkpoint of each run is validated. Latency: all models timed interleaved in one loop (prune.measure).
The table is appended to bench/results/torch_pruning.md (`--no-record`: not), its mAP figures to the
README's headline.

A Torch-Pruning model is changed in place, so its `arch` dict still describes the unpruned widths. It is
turned back into a plain `Model` the way our own pruned checkpoints are described: explicit per-conv output
channels (`arch['channels']`), the pruned state_dict loaded strictly, outputs checked equal. From then on it
trains, checkpoints and validates like any of our models.

torch_pruning lives in .venv-tp only (make bench-tp); importing this module does not need it.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

from bench.evolve_speed import shared_start
from bench.record import command_line, machine, record, write_json
from core.cli import main_guard
from core.model.info import model_gflops
from core.model.yolo import Model
from core.val import validate
from prune.measure import cpu_latency_ms, measure, prunable_channels
from prune.options import PruneOptions, check_prune_options
from prune.pipeline import Pipeline, load_weights

M = TypeVar("M")
TP_IMPORTANCE = {"tp_bn": "BNScaleImportance", "tp_l1": "MagnitudeImportance(p=1)"}
DEFAULT_WEIGHTS = ""  # the quick study's base run, trained once and cached (runs/evolve/bench-base)

LOGGER = logging.getLogger(__name__)


class TPBenchError(ValueError):
    """An input of the benchmark cannot be used (weights, ratio search, missing torch_pruning)."""


# --- a pruned module as a plain Model ------------------------------------------------------------------

def as_core_model(pruned: nn.Module) -> nn.Module:
    """A Model rebuilt from `pruned`'s actual conv widths (arch['channels']) with its weights; outputs checked.

    For a model whose convs were cut in place (Torch-Pruning): its `arch` still names the old widths, so a
    checkpoint of it would not load. The rebuilt model has the same modules, names and tensors."""

    arch = copy.deepcopy(pruned.arch)
    arch["channels"] = {**(arch.get("channels") or {}), **prunable_channels(pruned)}
    p = next(pruned.parameters())
    model = Model(arch).to(device=p.device, dtype=p.dtype)
    try:
        model.load_state_dict(pruned.state_dict(), strict=True)
    except RuntimeError as e:
        raise TPBenchError(f"the pruned model's widths cannot be described by an architecture dict: "
                           f"{str(e)[:400]}") from None
    model.names = list(getattr(pruned, "names", model.names))
    model.train(pruned.training)
    with torch.no_grad():
        x = torch.rand(1, int(arch.get("ch", 3)), 160, 160, device=p.device, dtype=p.dtype)
        was = pruned.training
        a, b = pruned.eval()(x)[0], model.eval()(x)[0]
        pruned.train(was)
        model.train(was)
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
        diff = float((a - b).abs().max())
        raise TPBenchError(f"the rebuilt model differs from the pruned one (max |diff| {diff:.3g})")
    return model


# --- matching GFLOPs ----------------------------------------------------------------------------------------

@dataclass
class Match:
    ratio: float  # the pruning ratio of the chosen model
    gflops: float
    error: float  # gflops / target - 1
    trials: list[tuple[float, float]]  # (ratio, gflops) of every evaluation, in order


def match_gflops(prune_at: Callable[[float], M], gflops: Callable[[M], float], target: float,
                 tol: float = 0.01, lo: float = 0.0, hi: float = 0.95, max_iter: int = 16,
                 unit: str = "GFLOPs") -> tuple[M, Match]:
    """Bisect the pruning ratio in [lo, hi] until gflops(prune_at(ratio)) is within `tol` of `target`.

    GFLOPs (or any cost in `unit`, such as a latency: bench.deploy) must not grow with the ratio. Returns the closest model seen (and how close); raises
    TPBenchError when even `hi` keeps more GFLOPs than the target allows."""
    best: tuple[float, M, float, float] | None = None
    trials: list[tuple[float, float]] = []

    def evaluate(r: float) -> float:
        nonlocal best
        model = prune_at(r)
        g = gflops(model)
        trials.append((r, g))
        err = g / target - 1.0
        LOGGER.info(f"  ratio {r:.4f}: {g:.4f} {unit} ({err:+.2%} of the target)")
        if best is None or abs(err) < abs(best[3]):
            best = (r, model, g, err)
        return err

    if evaluate(hi) > tol:
        raise TPBenchError(f"pruning ratio {hi} still leaves {trials[-1][1]:.4f} {unit}, more than the target "
                           f"{target:.4f} (+{tol:.0%}); prune less on our side (--global-percent)")
    for _ in range(max_iter):
        if abs(best[3]) <= tol:
            break
        mid = (lo + hi) / 2
        err = evaluate(mid)
        if err > 0:
            lo = mid
        else:
            hi = mid
    r, model, g, err = best
    return model, Match(r, g, err, trials)


# --- Torch-Pruning ------------------------------------------------------------------------------------------

def _torch_pruning():
    try:
        import torch_pruning  # optional: installed in .venv-tp only (make bench-tp)
    except ImportError:
        raise TPBenchError("torch_pruning is not installed in this interpreter; run `make bench-tp` (it builds "
                           ".venv-tp with torch-pruning on .venv's torch) or use .venv-tp/bin/python") from None
    return torch_pruning


def tp_prune(model: nn.Module, importance: str, ratio: float, steps: int, round_to: int, imgsz: int) -> nn.Module:
    """A copy of `model` pruned by Torch-Pruning to `ratio` of its channels (global, in `steps` steps), as a Model."""
    tp = _torch_pruning()
    work = copy.deepcopy(model).float().cpu().eval()
    imp = {"tp_bn": lambda: tp.importance.BNScaleImportance(),
           "tp_l1": lambda: tp.importance.MagnitudeImportance(p=1)}[importance]()
    pruner_cls = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner  # MetaPruner: before 1.6
    pruner = pruner_cls(work, torch.zeros(1, int(work.arch.get("ch", 3)), imgsz, imgsz), importance=imp,
                        global_pruning=True, pruning_ratio=ratio, iterative_steps=steps,
                        ignored_layers=list(work.model[-1].m), round_to=round_to)
    for _ in range(steps):
        pruner.step()
    return as_core_model(work)


# --- the benchmark ------------------------------------------------------------------------------------------

@dataclass
class BenchOptions:
    weights: str = DEFAULT_WEIGHTS
    data: str | None = None
    global_percent: float = 0.5
    shortcuts: int = 4
    round_to: str | int = "auto"
    finetune_epochs: int = 10
    imgsz: int = 160
    batch_size: int = 16
    seed: int = 0
    workers: int = 2
    tp_steps: int = 5
    tolerance: float = 0.01
    latency_imgsz: int = 640
    latency_runs: int = 30
    latency_threads: int = 1
    project: str = "runs/bench"
    name: str = "tp"
    out: str = "runs/bench/tp_bench.json"
    progress: bool = True
    record: bool = True  # append the table to bench/results/torch_pruning.md


class Clock:
    """Wall seconds per named phase."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str, fn: Callable[[], M]) -> M:
        t = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t


def run(o: BenchOptions) -> dict:
    """Prune, finetune, measure; returns {'meta', 'rows', 'search', 'seconds'} (also written to o.out)."""

    _torch_pruning()  # fail before any work
    popts = PruneOptions(weights=o.weights, data=o.data, global_percent=o.global_percent, shortcuts=o.shortcuts,
                         round_to=o.round_to, finetune_epochs=o.finetune_epochs, imgsz=o.imgsz,
                         batch_size=o.batch_size, seed=o.seed, workers=o.workers, project=o.project,
                         name=o.name, progress=o.progress, latency_threads=o.latency_threads)
    check_prune_options(popts)
    clock = Clock()
    t0 = time.perf_counter()
    pipe = Pipeline(popts)
    pipe.check_prunable()
    meta = {**machine(), "options": asdict(o), "finetune_hyp": pipe.ft_hyp, "round_to": pipe.round_to,
            "torch": torch.__version__, "torch_pruning": _tp_version()}
    print(f"tp benchmark {meta['date']} on {machine_line(meta)}")
    print(f"both pruners start from the same weights ({o.weights}), no sparse training; GFLOPs at "
          f"{o.latency_imgsz} px; finetune {o.finetune_epochs} epochs each, same hyp, optimizer and seed")

    def gflops(m: nn.Module) -> float:
        return model_gflops(m, o.latency_imgsz)

    base = load_weights(popts, pipe.data["nc"])
    models: dict[str, nn.Module] = {"baseline": base}

    print("--- ours: channel (global |gamma|) + layer (shortcuts), from the baseline ---", flush=True)
    channel, _ = clock("prune ours", lambda: pipe.channel(base))
    models["ours"], _ = clock("prune ours", lambda: pipe.layer(channel))
    target = gflops(models["ours"])
    print(f"ours: {target:.4f} GFLOPs at {o.latency_imgsz} px (baseline {gflops(base):.4f})", flush=True)

    search = {}
    for key, imp in TP_IMPORTANCE.items():
        print(f"--- Torch-Pruning {imp}: bisecting the ratio to {target:.4f} GFLOPs +-{o.tolerance:.0%} ---",
              flush=True)
        _, match = clock(f"search {key}", lambda: match_gflops(
            lambda r: tp_prune(base, key, r, o.tp_steps, pipe.round_to, o.imgsz), gflops, target, o.tolerance))
        search[key] = asdict(match)
        print(f"{key}: ratio {match.ratio:.4f} -> {match.gflops:.4f} GFLOPs ({match.error:+.2%}), "
              f"{len(match.trials)} trials", flush=True)
        if abs(match.error) > o.tolerance:
            print(f"{key}: WARNING: no ratio within {o.tolerance:.0%}; the closest is {match.error:+.2%}")
        # the kept model, pruned once more at the chosen ratio: its time is the prune column's, and the same
        # GFLOPs again shows the pruning is deterministic
        models[key] = clock(f"prune {key}",
                            lambda: tp_prune(base, key, match.ratio, o.tp_steps, pipe.round_to, o.imgsz))
        if abs(gflops(models[key]) - match.gflops) > 1e-9:
            raise TPBenchError(f"{key}: pruning again at ratio {match.ratio} gave {gflops(models[key])} GFLOPs, "
                               f"the search {match.gflops}: Torch-Pruning is not deterministic here")

    for key in ("ours", *TP_IMPORTANCE):
        print(f"--- finetune {key} ({o.finetune_epochs} epochs) ---", flush=True)
        models[f"{key}_ft"] = clock(f"finetune {key}", lambda: pipe._fit(
            f"finetune_{key}", models[key], pipe.ft_hyp, o.finetune_epochs, popts.finetune_optimizer))

    rows = []
    order = ["baseline", *(k + ft for k in ("ours", *TP_IMPORTANCE) for ft in ("", "_ft"))]
    models = {k: models[k] for k in order}
    for name, model in models.items():
        m = clock("validate", lambda: validate(model, pipe.val_loader, names=pipe.data["names"], progress=False))
        cost = measure(model, o.latency_imgsz)
        rows.append({"model": name, **{k: float(m[k]) for k in ("P", "R", "mAP50", "mAP50-95", "fitness")},
                     "params": cost["params"], "GFLOPs": cost["GFLOPs"], "gflops_imgsz": o.latency_imgsz,
                     "channels": cost["channels"]})
    print(f"--- latency: {len(models)} models interleaved, median of {o.latency_runs}, batch 1, "
          f"{o.latency_imgsz} px, {o.latency_threads} thread(s), PyTorch fused ---", flush=True)
    ms = clock("latency", lambda: cpu_latency_ms(models, o.latency_imgsz, threads=o.latency_threads,
                                                  runs=o.latency_runs))
    for row in rows:
        row["latency_ms"] = ms[row["model"]]
        row["latency_vs_baseline"] = ms[row["model"]] / ms["baseline"]
        side = row["model"].removesuffix("_ft")
        row["prune_s"] = clock.seconds.get(f"prune {side}", 0.0)
        row["finetune_s"] = clock.seconds.get(f"finetune {side}", 0.0) if row["model"].endswith("_ft") else 0.0
    clock.seconds["total"] = time.perf_counter() - t0
    report = {"meta": meta, "rows": rows, "search": search, "seconds": clock.seconds}
    print()
    print(table(report))
    write_json(report, o.out)
    return report


def _tp_version() -> str:
    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        return "?"


LABELS = {"baseline": "baseline", "ours": "ours (channel+layer), pruned", "ours_ft": "ours (channel+layer), finetuned",
          "tp_bn": "TP BN-scale, pruned", "tp_bn_ft": "TP BN-scale, finetuned",
          "tp_l1": "TP L1, pruned", "tp_l1_ft": "TP L1, finetuned"}


def machine_line(meta: dict) -> str:
    """CPU, its SIMD flags, whether it has AVX-512, CPU count and the two library versions."""
    simd = meta.get("simd") or "?"
    return (f"{meta.get('cpu', '?')} ({simd}, AVX-512: {'yes' if 'avx512f' in simd else 'no'}), {meta['cpus']} CPUs; "
            f"torch {meta['torch']}, torch-pruning {meta['torch_pruning']}")


def table(report: dict) -> str:
    """The markdown table of a report (a pure function of the json)."""
    meta, rows = report["meta"], report["rows"]
    size = meta["options"]["latency_imgsz"]
    lines = [f"{meta['date'][:10]}, {machine_line(meta)}; finetune {meta['options']['finetune_epochs']} epochs",
             "",
             f"| model | mAP50 | mAP50-95 | params (M) | GFLOPs ({size} px) | CPU ms ({size} px, "
             f"{meta['options']['latency_threads']} thr) | latency / baseline | prune s | finetune s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ft = r["model"].endswith("_ft")
        prune_s = "-" if ft or r["model"] == "baseline" else f"{r['prune_s']:.1f}"
        finetune_s = f"{r['finetune_s']:.0f}" if ft else "-"
        lines.append(f"| {LABELS.get(r['model'], r['model'])} | {r['mAP50']:.4f} | {r['mAP50-95']:.4f} | "
                     f"{r['params'] / 1e6:.3f} | {r['GFLOPs']:.3f} | {r['latency_ms']:.1f} | "
                     f"{r['latency_vs_baseline']:.2f} | {prune_s} | {finetune_s} |")
    s = report["seconds"]
    lines.append("")
    lines.append("wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in s.items()))
    for key, m in report.get("search", {}).items():
        lines.append(f"{key}: pruning ratio {m['ratio']:.4f}, {m['gflops']:.4f} GFLOPs ({m['error']:+.2%} of ours), "
                     f"{len(m['trials'])} bisection trials")
    return "\n".join(lines)


HEADLINE = "mAP50-95 at equal GFLOPs after the same finetune: ours / Torch-Pruning BN-scale / L1"


def headline(report: dict) -> dict[str, str]:
    """The README's headline figure: the three finetuned mAP50-95 and the GFLOPs cut they share."""
    rows = {r["model"]: r for r in report["rows"]}
    if not all(k in rows for k in ("baseline", "ours_ft", "tp_bn_ft", "tp_l1_ft")):
        return {}
    cut = rows["ours_ft"]["GFLOPs"] / rows["baseline"]["GFLOPs"] - 1
    return {HEADLINE: f"{rows['ours_ft']['mAP50-95']:.4f} / {rows['tp_bn_ft']['mAP50-95']:.4f} / "
                      f"{rows['tp_l1_ft']['mAP50-95']:.4f} (GFLOPs {cut:+.0%}, "
                      f"{report['meta']['options']['finetune_epochs']} finetune epochs)"}


def parse_args(argv: list[str] | None = None) -> BenchOptions:
    d = BenchOptions()
    p = argparse.ArgumentParser(prog="python -m bench.torch_pruning", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", default=d.weights, help="trained baseline checkpoint (both pruners start from it; "
                   "default: the quick study's 30-epoch base run, trained once into runs/evolve/bench-base)")
    p.add_argument("--data", default=d.data, help="data yaml (default: the built-in synthetic dataset)")
    p.add_argument("--global-percent", type=float, default=d.global_percent,
                   help="our channel stage's share of |gamma|")
    p.add_argument("--shortcuts", type=int, default=d.shortcuts, help="our layer stage: shortcut blocks removed")
    p.add_argument("--round-to", default=d.round_to, help="'auto' (the machine's conv block) or N; TP gets the same")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--imgsz", type=int, default=d.imgsz)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--tp-steps", type=int, default=d.tp_steps, help="Torch-Pruning iterative steps to its ratio")
    p.add_argument("--tolerance", type=float, default=d.tolerance, help="GFLOPs match: |TP / ours - 1| <= this")
    p.add_argument("--latency-imgsz", type=int, default=d.latency_imgsz, help="image size of latency and GFLOPs")
    p.add_argument("--latency-runs", type=int, default=d.latency_runs)
    p.add_argument("--latency-threads", type=int, default=d.latency_threads)
    p.add_argument("--project", default=d.project, help="finetune runs go to PROJECT/NAME/train/finetune_<model>")
    p.add_argument("--name", default=d.name)
    p.add_argument("--out", default=d.out, help="the report (json)")
    p.add_argument("--report-only", default=None, metavar="JSON", help="print the table of an earlier report and exit")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="do not append the table to bench/results/torch_pruning.md")
    args = p.parse_args(argv)
    if args.report_only:
        return args
    opts = BenchOptions(**{k: getattr(args, k) for k in asdict(d)})
    if opts.round_to != "auto":
        opts.round_to = int(opts.round_to)
    if opts.weights and not Path(opts.weights).is_file():
        raise TPBenchError(f"--weights {opts.weights}: file not found (any trained best.pt will do; without "
                           f"--weights the quick study's base run is trained once and cached)")
    if opts.tp_steps < 1 or not 0 < opts.tolerance < 0.5:
        raise TPBenchError(f"--tp-steps {opts.tp_steps} must be >= 1 and --tolerance {opts.tolerance} in (0, 0.5)")
    return opts


@main_guard("bench.torch_pruning")
def main(argv: list[str] | None = None) -> int:

    opts = parse_args(argv)
    if isinstance(opts, argparse.Namespace):
        print(table(json.loads(Path(opts.report_only).read_text())))
        return 0
    t = time.perf_counter()
    if not opts.weights:  # a fresh clone: the quick study's base run, shared with `make bench-search`

        opts.weights = shared_start("studies/quick.yaml", {"gpus": "cpu"})["weights"]
    report = run(opts)
    if opts.record:
        record("torch_pruning", table(report), report["meta"], command_line("bench.torch_pruning", argv),
               headline=headline(report))
    print(f"\nfinetune runs (results.csv, best.pt per model) under {Path(opts.project) / opts.name / 'train'}; "
          f"report {opts.out}; {datetime.timedelta(seconds=round(time.perf_counter() - t))} in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
