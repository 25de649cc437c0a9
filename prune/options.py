"""Options of `python -m prune.pipeline`: one dataclass, its command line, its checks."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from core import argtypes as t
from core.train import DEFAULT_MODEL
from core.yaml_file import load_yaml
from prune.allocation import ALLOCATIONS
from prune.distill import DEFAULT_DISTILL_WEIGHT
from prune.masks import MaskOptions, PruneOptionError, check_options
from prune.sparsity import DEFAULT_PENALTY, PENALTIES, SCHEDULES
from prune.target import TARGET_FIELDS

__all__ = ["PruneOptions", "check_prune_options", "parse_args", "shortcuts_arg"]

LATENCY_BACKENDS = ("auto", "onnxruntime", "torch")


@dataclass
class PruneOptions:
    study: str | None = None
    data: str | None = None
    model: str | None = None
    weights: str | None = None
    hyp: str | None = None
    epochs: int = 30  # baseline training epochs (ignored with --weights)
    global_percent: float = 0.2
    layer_keep: float = 0.01
    allocation: str = "global"  # what the global threshold ranks: |gamma|, LAMP scores, sensitivity-weighted |gamma|
    sensitivity: str | None = None  # sensitivity.csv of prune.sensitivity (for --allocation sensitivity)
    shortcuts: int | str = 0  # or "auto" with a --target-*: the fewest blocks that let the share meet it
    sr: bool = False
    s: float = 1e-4
    s_schedule: str = "const"
    penalty: str = DEFAULT_PENALTY  # polar (polarization: bimodal gammas) or l1 (network slimming: shrinks all alike)
    polar_t: float = 1.2
    sparse_epochs: int = 10
    finetune_epochs: int = 10
    finetune_hyp: str | None = None
    finetune_lr_scale: float = 0.1  # default finetune hyp: the hyp with lr0 scaled by this, no warmup
    sparse_lr_scale: float = 1.0  # sparse stage: the hyp with lr0 scaled by this, no warmup
    baseline_optimizer: str = "auto"  # the engine's default recipe
    sparse_optimizer: str = "auto"  # measured: SGD after an AdamW baseline halved mAP in the stage (README)
    finetune_optimizer: str = "auto"  # measured: recovers far better than SGD (README)
    distill: bool = False  # finetune: also learn the unpruned model's head outputs (prune/distill.py)
    distill_weight: float = DEFAULT_DISTILL_WEIGHT
    round_to: str | int = "auto"  # 'auto' = the machine's conv block (prune/rounding.py)
    unstructured: float = 0.0  # share of each conv's smallest weights zeroed in the unstructured row (0 = no row)
    iterative: int = 1  # prune -> finetune in this many steps to the same target (1 = one-shot)
    iterative_epochs: int = 0  # finetune epochs after each intermediate step (0 = finetune_epochs // iterative)
    imgsz: int = 160
    batch_size: int = 16
    nbs: int = 0  # nominal batch size (0 = the engine's default: 64, or the batch under auto's AdamW)
    device: str = "cpu"
    workers: int = 2
    threads: int = 0  # torch threads for training (0 = core.train's auto rule, core/cpu.py)
    latency_threads: int = 1
    latency_imgsz: int = 0  # image size of the latency runs (0 = --imgsz)
    latency_runs: int = 30
    onnx_latency: bool = True  # also export each stage's model and time it in onnxruntime (needs the export extra)
    target_gflops: float = 0.0  # > 0: prune to this GFLOPs (at --imgsz) instead of --global-percent (prune/target.py)
    target_params: float = 0.0  # > 0: prune to this many parameters
    target_latency_ms: float = 0.0  # > 0: prune to this batch-1 latency (--latency-backend, --latency-imgsz, --latency-threads)
    target_speedup: float = 0.0  # > 1: prune to the start model's own latency / this, timed as --target-latency-ms is
    target_tolerance: float = 0.01  # a candidate meets a target when its cost <= target x (1 + this)
    refill: bool = False  # after the target's share search, give channels back where they cost nothing (prune/refill.py)
    latency_backend: str = "auto"  # where a latency target is measured: onnxruntime, torch, auto (onnxruntime if installed)
    seed: int = 0
    project: str = "runs/prune"
    name: str = "exp"
    force: bool = False
    progress: bool = True


def _study_defaults(opts: PruneOptions, given: set[str]) -> None:
    """Fill data, model, hyp, imgsz, batch_size from a study file where no flag was given."""
    if not opts.study:
        return
    study = load_yaml(opts.study, "--study file", error=PruneOptionError)
    for key, skey in (("data", "data"), ("model", "model"), ("hyp", "hyp"), ("imgsz", "imgsz"), ("batch_size", "batch")):
        if key not in given and study.get(skey) is not None:
            setattr(opts, key, study[skey])


def _round_to(value: str) -> str | int:
    return value if value == "auto" else t.positive_int(value)  # else: an integer >= 1


def shortcuts_arg(value: str) -> str | int:
    return value if value == "auto" else t.non_negative_int(value)


def check_prune_options(opts: PruneOptions) -> None:
    """PruneOptionError for a value out of range or a missing --weights file (options built in Python skip argparse)."""
    check_options(MaskOptions(opts.global_percent, opts.layer_keep, 1 if opts.round_to == "auto" else int(opts.round_to),
                              opts.allocation, {"": 0.0} if opts.sensitivity else None))
    if opts.sensitivity and not Path(opts.sensitivity).is_file():
        raise PruneOptionError(f"--sensitivity {opts.sensitivity}: file not found")
    if not 0.0 <= opts.unstructured < 1.0:
        raise PruneOptionError(f"--unstructured {opts.unstructured} is outside [0, 1)")
    if opts.iterative < 1 or opts.iterative_epochs < 0:
        raise PruneOptionError(f"--iterative {opts.iterative} must be >= 1 and --iterative-epochs "
                               f"{opts.iterative_epochs} >= 0")
    targets = [k for k in TARGET_FIELDS if getattr(opts, k)]  # --target-gflops, --target-params, --target-latency-ms
    if opts.shortcuts == "auto":
        if not targets:
            raise PruneOptionError("--shortcuts auto needs a --target-gflops, --target-params, --target-latency-ms or "
                                   "--target-speedup (it removes the fewest blocks that let the target be met)")
    elif not isinstance(opts.shortcuts, int) or opts.shortcuts < 0:
        raise PruneOptionError(f"--shortcuts {opts.shortcuts!r} must be an integer >= 0 or 'auto'")
    if opts.s_schedule not in SCHEDULES:
        raise PruneOptionError(f"--s-schedule {opts.s_schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if opts.s < 0:
        raise PruneOptionError(f"--s {opts.s} must be >= 0")
    for key in ("epochs", "sparse_epochs", "finetune_epochs"):
        if getattr(opts, key) < 0:
            raise PruneOptionError(f"--{key.replace('_', '-')} {getattr(opts, key)} must be >= 0")
    flags = {k: "--" + k.replace("_", "-") for k in targets}
    if len(targets) > 1:
        raise PruneOptionError(f"{' and '.join(flags.values())}: give one target at a time")
    for k in targets:
        if getattr(opts, k) < 0:
            raise PruneOptionError(f"{flags[k]} {getattr(opts, k)} must be > 0 (0 = no target)")
    if 0 < opts.target_speedup <= 1:
        raise PruneOptionError(f"--target-speedup {opts.target_speedup} must be > 1 (faster than the start model)")
    if opts.refill and not targets:
        raise PruneOptionError("--refill needs a --target-* (gflops, params, latency-ms or speedup; it gives "
                               "channels back while the target stays met)")
    if opts.refill and opts.iterative > 1:
        raise PruneOptionError(f"--refill with --iterative {opts.iterative}: the refill grows the one-shot masks; "
                               "use --iterative 1")
    if opts.latency_backend not in LATENCY_BACKENDS:
        raise PruneOptionError(f"--latency-backend {opts.latency_backend!r}: choose one of {', '.join(LATENCY_BACKENDS)}")
    if opts.distill_weight < 0:
        raise PruneOptionError(f"--distill-weight {opts.distill_weight} must be >= 0")
    if opts.weights and not Path(opts.weights).is_file():
        raise PruneOptionError(f"--weights {opts.weights}: file not found")


def parse_args(argv: list[str] | None = None) -> PruneOptions:
    d = PruneOptions()
    p = argparse.ArgumentParser(prog="python -m prune.pipeline",
                                description="network slimming: baseline -> sparse -> channel -> layer -> finetune")
    p.add_argument("--study", type=t.existing_file, help="study yaml: default data, model, hyp, imgsz, batch")
    p.add_argument("--data", type=t.existing_file, help="data yaml (default: the built-in synthetic dataset)")
    p.add_argument("--model", help=f"model yaml to train the baseline from (default {DEFAULT_MODEL})")
    p.add_argument("--weights", type=t.existing_file, help="a trained checkpoint: the baseline is evaluated, not trained")
    p.add_argument("--hyp", type=t.existing_file, help="hyp yaml (e.g. best_hyp.yaml from evolution)")
    p.add_argument("--epochs", type=t.positive_int, default=d.epochs, help="baseline training epochs")
    p.add_argument("--global-percent", type=t.fraction, default=d.global_percent, help="share of |gamma| pruned, [0, 1)")
    p.add_argument("--layer-keep", type=t.fraction, default=d.layer_keep, help="per-layer floor share (0 = strict)")
    p.add_argument("--allocation", default=d.allocation, choices=ALLOCATIONS,
                   help="what the global threshold ranks: |gamma| (global), LAMP scores (lamp: layer-adaptive), or "
                   "|gamma| weighted by measured per-layer mAP drops (sensitivity; needs --sensitivity)")
    p.add_argument("--sensitivity", type=t.existing_file, help="sensitivity.csv from python -m prune.sensitivity")
    p.add_argument("--shortcuts", type=shortcuts_arg, default=d.shortcuts,
                   help="shortcut Bottlenecks to remove, or 'auto' with a --target-*: the fewest that meet it")
    p.add_argument("--sr", action="store_true", help="run the sparse-training stage")
    p.add_argument("--s", type=t.non_negative_float, default=d.s, help="sparsity rate on BN gammas (per-sample scale: README, Prune)")
    p.add_argument("--s-schedule", default=d.s_schedule, choices=SCHEDULES)
    p.add_argument("--penalty", default=d.penalty, choices=PENALTIES,
                   help="sparsity penalty on BN gammas: l1 (network slimming) or polar (polarization, Zhuang et al. 2020)")
    p.add_argument("--polar-t", type=t.non_negative_float, default=d.polar_t, help="polarization's t (> 1: shrink everywhere)")
    p.add_argument("--sparse-epochs", type=t.non_negative_int, default=d.sparse_epochs)
    p.add_argument("--finetune-epochs", type=t.non_negative_int, default=d.finetune_epochs)
    p.add_argument("--finetune-hyp", type=t.existing_file, help="hyp yaml for finetuning (default: --hyp with lr0 x --finetune-lr-scale)")
    p.add_argument("--finetune-lr-scale", type=t.non_negative_float, default=d.finetune_lr_scale)
    p.add_argument("--sparse-lr-scale", type=t.non_negative_float, default=d.sparse_lr_scale,
                   help="sparse stage lr0 = hyp lr0 x this, with --sparse-optimizer SGD/Adam/AdamW (auto sets its own lr0)")
    p.add_argument("--round-to", type=_round_to, default=d.round_to,
                   help="kept channels rounded up to a multiple; auto = the machine's conv block (AVX-512 16, AVX2 8, CUDA 8)")
    p.add_argument("--unstructured", type=t.fraction, default=d.unstructured,
                   help="add a row with this share of each conv's smallest weights zeroed (YOLOv5's prune())")
    p.add_argument("--iterative", type=t.positive_int, default=d.iterative, help="prune -> finetune in this many steps")
    p.add_argument("--iterative-epochs", type=t.non_negative_int, default=d.iterative_epochs,
                   help="finetune epochs after each intermediate step (0 = finetune epochs // steps)")
    for stage in ("baseline", "sparse", "finetune"):
        p.add_argument(f"--{stage}-optimizer", default=getattr(d, f"{stage}_optimizer"),
                       choices=("auto", "SGD", "Adam", "AdamW"))
    p.add_argument("--distill", action="store_true", help="finetune with output distillation: the unpruned model "
                   "(after --sr, the sparse one) as a frozen teacher on the same batches (docs/prune.md)")
    p.add_argument("--distill-weight", type=t.non_negative_float, default=d.distill_weight,
                   help="weight of the distillation loss against the detection loss (with --distill)")
    p.add_argument("--imgsz", type=t.positive_int, default=d.imgsz)
    p.add_argument("--batch-size", type=t.positive_int, default=d.batch_size)
    p.add_argument("--nbs", type=t.non_negative_int, default=d.nbs, help="nominal batch size (gradient accumulation)")
    p.add_argument("--device", type=t.device, default=d.device)
    p.add_argument("--workers", type=t.non_negative_int, default=d.workers)
    p.add_argument("--threads", type=t.non_negative_int, default=d.threads, help="torch threads for training (0 = auto, as core.train)")
    p.add_argument("--latency-threads", type=t.positive_int, default=d.latency_threads)
    p.add_argument("--latency-runs", type=t.positive_int, default=d.latency_runs)
    p.add_argument("--latency-imgsz", type=t.non_negative_int, default=d.latency_imgsz, help="latency image size (0 = --imgsz)")
    p.add_argument("--no-onnx-latency", dest="onnx_latency", action="store_false",
                   help="do not export the stages to ONNX and time them in onnxruntime beside PyTorch")
    p.add_argument("--target-gflops", type=t.non_negative_float, default=d.target_gflops, metavar="G",
                   help="prune to at most G GFLOPs at --imgsz: the global share is searched (overrides --global-percent)")
    p.add_argument("--target-params", type=t.non_negative_float, default=d.target_params, metavar="P",
                   help="prune to at most P parameters (share searched as for --target-gflops)")
    p.add_argument("--target-latency-ms", type=t.non_negative_float, default=d.target_latency_ms, metavar="T",
                   help="prune to a batch-1 latency of at most T ms, timed on this CPU by --latency-backend")
    p.add_argument("--target-speedup", type=t.non_negative_float, default=d.target_speedup, metavar="S",
                   help="prune to the start model's own latency / S (timed first, as --target-latency-ms is): a "
                        "budget that holds on any machine")
    p.add_argument("--target-tolerance", type=t.fraction, default=d.target_tolerance,
                   help="a target counts as met up to target x (1 + this)")
    p.add_argument("--refill", action="store_true",
                   help="after the share search, grow the pruned groups one conv block at a time, cheapest first, while "
                        "the target stays met (a latency target: at most 1%% slower than the searched model, paired)")
    p.add_argument("--latency-backend", default=d.latency_backend, choices=LATENCY_BACKENDS,
                   help="where --target-latency-ms is timed (auto: onnxruntime if installed, else torch)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--project", default=d.project)
    p.add_argument("--name", default=d.name)
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    opts = PruneOptions(**{f.name: getattr(args, f.name) for f in fields(PruneOptions)})
    for action in p._actions:  # a second parse without defaults tells which flags were given
        action.default = argparse.SUPPRESS
    given = set(vars(p.parse_args(argv)))
    _study_defaults(opts, given)
    return opts
