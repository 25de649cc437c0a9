"""`python -m bench.deploy_allocation`: where the pruning goes, at one latency budget: the global |gamma| threshold
beside LAMP scores and sensitivity-weighted |gamma| (prune.pipeline --allocation). A benchmark, not a library.

From one trained checkpoint (`--weights`, no sparse stage, so the three rankings differ most), the per-layer
sensitivity is measured first (prune.sensitivity on `--images` val images at `--shares`, written beside the
runs). Then, per allocation, prune.pipeline searches the global share whose pruned model meets the same
onnxruntime latency target (the baseline's / `--speedup`, at `--imgsz`), removes `--shortcuts` blocks and
finetunes `--finetune-epochs`. The finetuned models and the baseline are then timed in one interleaved loop.
One seed: a difference between the arms carries no seed spread. The table goes to bench/results/deploy_allocation.md.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.deploy import DeployOptions, onnx_latency_ms, run_arm
from bench.record import command_line, machine, markdown_table, record, write_json
from core import argtypes as t
from core.atomic import atomic_write
from core.checkpoint import model_from_checkpoint
from core.cli import main_guard
from core.export import export_onnx
from core.val import validate
from prune.allocation import ALLOCATIONS
from prune.measure import cpu_latency
from prune.options import PruneOptions
from prune.sensitivity import measure_sensitivity, val_subset


def run(args: argparse.Namespace) -> dict:
    out = Path(args.project) / args.name
    out.mkdir(parents=True, exist_ok=True)
    base = model_from_checkpoint(args.weights).float().eval()
    batches = val_subset(args.data, args.imgsz, args.images)
    print(f"--- sensitivity: {len(args.shares)} shares per coupling group, {args.images} val images ---", flush=True)
    sens = measure_sensitivity(base, lambda m: float(validate(m, batches, progress=False)["mAP50-95"]), args.shares,
                               args.progress)
    sens_csv = atomic_write(out / "sensitivity.csv", sens.to_csv(index=False))
    timing = DeployOptions(imgsz=args.imgsz, latency_runs=args.latency_runs)
    base_ms = onnx_latency_ms(base, timing, out / "baseline_timing.onnx")
    target = base_ms / args.speedup
    arms = {}
    for allocation in args.allocations:
        print(f"--- {allocation}: share searched to {target:.3f} ms ---", flush=True)
        popts = PruneOptions(weights=args.weights, data=args.data, allocation=allocation,
                             sensitivity=str(sens_csv) if allocation == "sensitivity" else None,
                             finetune_epochs=args.finetune_epochs, shortcuts=args.shortcuts, imgsz=args.imgsz,
                             seed=args.seed, workers=args.workers, latency_imgsz=args.imgsz,
                             latency_runs=args.latency_runs, latency_backend="onnxruntime", target_latency_ms=target,
                             target_tolerance=0.02, onnx_latency=False, project=str(out), name=allocation,
                             progress=args.progress)
        rows, note, _ = run_arm(popts)  # sets popts.global_percent to the share it pruned at
        arms[allocation] = {"rows": rows, "note": note, "share": popts.global_percent}
    models = {"baseline": base, **{a: model_from_checkpoint(out / a / "finetune.pt") for a in arms}}
    (out / "onnx").mkdir(exist_ok=True)
    files = {k: export_onnx(m, out / "onnx" / f"{k}.onnx", imgsz=args.imgsz) for k, m in models.items()}
    lat = cpu_latency({}, args.imgsz, 1, runs=args.final_runs, onnx=files)
    for a, arm in arms.items():
        arm.update(ms=lat[a].median, p25=lat[a].p25, p75=lat[a].p75, speedup=lat["baseline"].median / lat[a].median)
    return {"target_ms": target, "baseline_search_ms": base_ms, "baseline_ms": lat["baseline"].median,
            "baseline": arms[next(iter(arms))]["rows"]["baseline"], "arms": arms,
            "sensitive": sens.groupby("group")["drop"].mean().sort_values(ascending=False).head(3).round(4).to_dict()}


def table(r: dict, args: argparse.Namespace) -> str:
    after = f"after {args.finetune_epochs}-epoch finetune"
    header = ["allocation", "global share", "mAP50-95 after channels+layers", f"mAP50-95 {after}", f"mAP50 {after}",
              f"ORT ms ({args.imgsz} px, 1 thr): median (p25-p75)", "speedup", "params", "GFLOPs"]
    base = r["baseline"]
    rows = [["baseline (unpruned)", "-", f"{base['mAP50-95']:.4f}", "-", f"{base['mAP50']:.4f}",
             f"{r['baseline_ms']:.3f}", "1.00x", f"{base['params']:,}", f"{base['GFLOPs']:.4f}"]]
    for a, arm in r["arms"].items():
        ft = arm["rows"]["finetune"]
        rows.append([a, f"{arm['share']:.4f}", f"{arm['rows']['layer']['mAP50-95']:.4f}", f"{ft['mAP50-95']:.4f}",
                     f"{ft['mAP50']:.4f}", f"{arm['ms']:.3f} ({arm['p25']:.3f}-{arm['p75']:.3f})",
                     f"{arm['speedup']:.2f}x", f"{ft['params']:,}", f"{ft['GFLOPs']:.4f}"])
    notes = [f"Note ({a}): {arm['note']}" for a, arm in r["arms"].items() if arm["note"]]
    return "\n".join([markdown_table(header, rows), "",
                      f"From {args.weights}, no sparse stage; each allocation's share searched to the same onnxruntime "
                      f"target {r['target_ms']:.3f} ms (baseline {r['baseline_search_ms']:.3f} ms / {args.speedup:g}, "
                      f"+2%), {args.shortcuts} shortcut blocks removed, finetune {args.finetune_epochs} epochs, seed "
                      f"{args.seed} (one run each: no seed spread). Sensitivity on {args.images} val images at shares "
                      f"{', '.join(map(str, args.shares))}; the most sensitive groups (mean drop): "
                      + ", ".join(f"{k} {v:+.4f}" for k, v in r["sensitive"].items())
                      + f". Latency: one interleaved loop of {args.final_runs} rounds.", *notes])


@main_guard("bench.deploy_allocation")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.deploy_allocation", description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=t.existing_file, required=True)
    p.add_argument("--data", type=t.existing_file)
    p.add_argument("--allocations", nargs="+", choices=ALLOCATIONS, default=list(ALLOCATIONS))
    p.add_argument("--speedup", type=t.non_negative_float, default=1.3)
    p.add_argument("--imgsz", type=t.positive_int, default=160)
    p.add_argument("--shortcuts", type=t.non_negative_int, default=0)
    p.add_argument("--finetune-epochs", type=t.non_negative_int, default=10)
    p.add_argument("--images", type=t.positive_int, default=64, help="val images of the sensitivity measurement")
    p.add_argument("--shares", type=t.fraction, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--latency-runs", type=t.positive_int, default=30)
    p.add_argument("--final-runs", type=t.positive_int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=t.non_negative_int, default=2)
    p.add_argument("--project", default="runs/deploy")
    p.add_argument("--name", default="allocation")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-record", dest="record", action="store_false")
    args = p.parse_args(argv)
    meta = machine()
    r = run(args)
    text = table(r, args)
    print(text)
    write_json(r, Path(args.project) / args.name / "allocation.json")
    if args.record:
        record("deploy_allocation", text, meta, command_line("bench.deploy_allocation", argv))
    print(f"\nruns under {Path(args.project) / args.name} (sensitivity.csv, one pipeline folder per allocation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
