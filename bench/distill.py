"""`python -m bench.distill`: mAP after the prune pipeline's finetune with and without --distill, equal epochs, seeds.

From one trained checkpoint (`--weights`), for each seed the pipeline runs baseline (evaluated, not trained) ->
channel (`--global-percent`) -> layer (`--shortcuts`) -> finetune (`--finetune-epochs`), once plain and once with
`--distill --distill-weight W` for each `--weights-distill` value, the arms of a seed run back to back so a
change of machine load falls on all of them. Each arm's row: mAP50-95 and mAP50 after finetune per seed, their
mean and sample sd; the baseline (the teacher) and the pruned model before finetune beside them. The table goes
to bench/results/distill.md.
"""
from __future__ import annotations

import argparse
import logging
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from bench.record import command_line, machine, markdown_table, record, write_json
from core import argtypes as t
from core.cli import main_guard
from prune.options import PruneOptions
from prune.pipeline import run as run_pipeline

LOGGER = logging.getLogger(__name__)


def arms(weights: Sequence[float]) -> dict[str, float | None]:
    """Arm name -> distillation weight (None: the plain finetune)."""
    return {"plain": None, **{f"distill {w:g}": w for w in weights}}


def run(args: argparse.Namespace) -> dict:
    base = PruneOptions(data=args.data, weights=args.weights, global_percent=args.global_percent,
                        shortcuts=args.shortcuts, finetune_epochs=args.finetune_epochs, imgsz=args.imgsz,
                        workers=args.workers, onnx_latency=False, latency_runs=1, project=args.out,
                        progress=args.progress)
    results: dict[str, dict] = {}
    for seed in args.seeds:
        for arm, weight in arms(args.weights_distill).items():
            opts = replace(base, seed=seed, name=f"seed{seed}", distill=weight is not None,
                           distill_weight=weight if weight is not None else base.distill_weight)
            rows = {r["stage"]: r for r in run_pipeline(opts)}  # stages before finetune are reused across arms
            results.setdefault(arm, {})[seed] = {k: rows["finetune"][k] for k in ("mAP50-95", "mAP50")}
            results.setdefault("baseline (teacher)", {})[seed] = {k: rows["baseline"][k] for k in ("mAP50-95", "mAP50")}
            results.setdefault("pruned, before finetune", {})[seed] = {k: rows["layer"][k] for k in ("mAP50-95", "mAP50")}
            LOGGER.info(f"seed {seed}, {arm}: mAP50-95 {rows['finetune']['mAP50-95']:.4f}")
    return {"seeds": list(args.seeds), "arms": results, "options": {k: str(v) for k, v in vars(args).items()}}


def _spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def table(r: dict, args: argparse.Namespace) -> str:
    seeds = r["seeds"]
    header = ["", *(f"mAP50-95 seed {s}" for s in seeds), "mAP50-95 mean ± sd", "mAP50 mean ± sd"]
    order = ["baseline (teacher)", "pruned, before finetune", *arms(args.weights_distill)]
    rows = [[arm, *(f"{r['arms'][arm][s]['mAP50-95']:.4f}" for s in seeds),
             _spread([r["arms"][arm][s]["mAP50-95"] for s in seeds]),
             _spread([r["arms"][arm][s]["mAP50"] for s in seeds])] for arm in order]
    note = (f"\n\nFinetune {args.finetune_epochs} epochs (the pipeline's auto optimizer), {args.imgsz} px, global "
            f"percent {args.global_percent}, {args.shortcuts} shortcuts removed, from {args.weights}; sd over seeds "
            f"(n = {len(seeds)}, sample sd). The seed changes the finetune's data order and augmentation only.")
    return markdown_table(header, rows) + note


@main_guard("bench.distill")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distill", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=t.existing_file, required=True, help="the trained (unpruned) checkpoint")
    p.add_argument("--data", type=t.existing_file, default=None, help="data yaml (default: the built-in dataset)")
    p.add_argument("--global-percent", type=t.fraction, default=0.5)
    p.add_argument("--shortcuts", type=t.non_negative_int, default=0)
    p.add_argument("--finetune-epochs", type=t.positive_int, default=5)
    p.add_argument("--imgsz", type=t.positive_int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--weights-distill", type=t.non_negative_float, nargs="+", default=[1.0],
                   help="--distill-weight values, one arm each")
    p.add_argument("--workers", type=t.non_negative_int, default=1)
    p.add_argument("--out", default="runs/bench-distill")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/distill.md")
    args = p.parse_args(argv)
    meta = machine()
    r = run(args)
    text = table(r, args)
    print(text)
    write_json(r, Path(args.out) / "distill.json")
    if not args.no_record:
        record("distill", text, meta, command_line("bench.distill", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
