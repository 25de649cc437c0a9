"""`python -m bench.deploy` (make deploy): a trained model and a latency budget to its deployable form, with
Torch-Pruning at the same budget beside it. A benchmark, not a library.

From one trained checkpoint (`--weights`; default: the quick study's base run, trained once and cached in
runs/evolve/bench-base, as make bench-tp does) and a budget (`--speedup S`: the baseline's onnxruntime latency
/ S, or `--target-latency-ms T`), at one deploy image size (`--imgsz`: training, validation and timing alike):
- baseline fp32: the checkpoint as it is;
- pruned to target: prune.pipeline (a sparse stage only with `--sparse-epochs` > 0), the global share searched on
  the real pruned model to the latency target in onnxruntime (prune/target.py), with `--shortcuts` blocks removed
  (default auto: the fewest that let a share meet the target),
  then `--finetune-epochs` (run folder NAME/plain);
- + refill (`--refill`): the plain arm's stages and share reused, channels given back where they cost no latency
  (prune --refill: prune/refill.py), then the same finetune (NAME/refill);
- + distillation: the same stages reused (their files copied), only the finetune redone with --distill
  (NAME/distill);
- + INT8: the distilled model quantized by the pipeline (prune/int8.py: onnxruntime static QDQ);
- Torch-Pruning (BN-scale and L1, bench/torch_pruning.py): from the same checkpoint, its ratio bisected until
  its onnxruntime latency, timed beside our pruned model's, matches it, then finetuned as long as ours trained after the baseline
  (sparse + finetune epochs), same hyp, optimizer and seed; with `--tp-bracket B` (default 0.10) a second row per
  importance bisected to our latency x (1 + B), so that its accuracy at our exact latency in the final loop is
  read between its two rows (tp_at_our_latency) rather than at whatever latency the bisection landed on.
Every deployable is then exported to ONNX at `--imgsz` and timed in one interleaved loop (batch 1,
`--latency-threads`, median and quartiles of `--final-runs` rounds), so the speedups are ratios measured side by
side. A row meets the budget when its speedup over the baseline is >= S and its mAP50-95 >= baseline - `--max-drop`.
The table goes to bench/results/deploy.md (`--no-record`: not); the figures to NAME/deploy.json.

One seed: the mAP differences carry no seed spread (bench.distill measures the distillation arm over seeds).
torch_pruning lives in .venv-tp only (make deploy runs there); `--no-tp` leaves its rows out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from torch import nn

from bench.evolve_speed import shared_start
from bench.record import (
    command_line,
    machine,
    machine_line,
    markdown_table,
    record,
    write_json,
)
from bench.torch_pruning import (
    TP_IMPORTANCE,
    Clock,
    TPBenchError,
    _torch_pruning,
    _tp_version,
    match_gflops,
    tp_prune,
)
from core import argtypes as t
from core.checkpoint import model_from_checkpoint
from core.cli import main_guard
from core.export import export_onnx
from core.model.info import model_gflops, param_count
from core.val import validate
from prune.allocation import ALLOCATIONS
from prune.distill import DEFAULT_DISTILL_WEIGHT
from prune.int8 import INT8_JSON
from prune.layers import rank_shortcuts
from prune.masks import MaskOptions
from prune.measure import cpu_latency, model_latency
from prune.options import PruneOptions, check_prune_options, shortcuts_arg
from prune.pipeline import Pipeline, load_weights
from prune.pipeline import run as run_pipeline
from prune.rounding import resolve_round_to
from prune.target import TargetUnreachable, largest_share, pruned_at

LOGGER = logging.getLogger(__name__)

# the stages the distilled arm takes from the plain one (everything before the finetune), and the search's record
SHARED_FILES = [f"{s}.{ext}" for s in ("baseline", "sparse", "keep_size", "channel", "layer") for ext in ("pt", "json")]
SHARED_FILES += ["target.json", "gamma.jsonl"]
REACH_SHARES = (0.5, 0.7, 0.85, 0.95)  # --reach: the shares timed (and the largest)
TP_MAX_RATIO = 0.95  # the largest Torch-Pruning ratio tried (bench.torch_pruning's bisection bound)
OURS = ("pruned", "refilled", "distilled", "int8")  # the rows of our pipeline (a run has those its options asked for)
SLOW = "_slow"  # a Torch-Pruning row bisected to our latency x (1 + tp_bracket): tp_bn_slow, tp_l1_slow
LABELS = {"baseline": "baseline fp32", "pruned": "pruned to target", "refilled": "pruned + refill",
          "distilled": "+ distillation",
          "int8": "+ INT8", "tp_bn": "Torch-Pruning BN-scale", "tp_l1": "Torch-Pruning L1"}
LABELS.update({k + SLOW: f"{LABELS[k]}, slower" for k in TP_IMPORTANCE})
TP_ROWS = (*TP_IMPORTANCE, *(k + SLOW for k in TP_IMPORTANCE))


class DeployError(ValueError):
    """An input of the deploy bench cannot be used."""


@dataclass
class DeployOptions:
    weights: str = ""  # '' = the quick study's base run (trained once, cached)
    data: str | None = None
    speedup: float = 3.0  # the budget: baseline onnxruntime latency / this ...
    target_latency_ms: float = 0.0  # ... unless this is > 0
    max_drop: float = 0.01  # the budget's accuracy side: mAP50-95 >= baseline - this
    imgsz: int = 160  # train, validate and time at this size: the deploy size
    sparse_epochs: int = 0  # 0: no sparse stage (at equal epochs it cost accuracy at a latency budget: deploy.md)
    s: float = 2e-3  # sparsity rate (polar penalty, step schedule: make prune's recipe) when sparse_epochs > 0
    finetune_epochs: int = 20
    shortcuts: int | str = "auto"  # the fewest shortcut blocks that let the share meet the budget
    round_to: str | int = "auto"  # kept channels rounded up to a multiple ('auto': the machine's conv block)
    allocation: str = "global"  # what the share's threshold ranks (prune/allocation.py): |gamma|, lamp, l1
    distill_weight: float = DEFAULT_DISTILL_WEIGHT
    distill: bool = True  # the distillation and INT8 rows (--no-distill: not)
    refill: bool = False  # a row pruned to the target with channels given back where they cost no latency
    tp: list[str] = field(default_factory=lambda: list(TP_IMPORTANCE))  # [] = no Torch-Pruning rows
    tp_steps: int = 5
    tp_bracket: float = 0.10  # each Torch-Pruning importance also bisected to our latency x (1 + this): a slower
    # row, so its accuracy at our exact latency is read between two rows (0: one row, aimed at our latency)
    target_tolerance: float = 0.02  # a latency within target x (1 + this) meets it (timing noise)
    batch_size: int = 16
    workers: int = 2
    latency_threads: int = 1
    latency_runs: int = 30  # per candidate of the searches
    final_runs: int = 100  # the final interleaved loop
    seed: int = 0
    project: str = "runs/deploy"
    name: str = "exp"
    progress: bool = True
    record: bool = True


def prune_options(o: DeployOptions, run_dir: Path) -> PruneOptions:
    """The pipeline's options for the plain arm: sparse stage, latency target in onnxruntime at the deploy size
    (`--speedup`: the pipeline's --target-speedup, every candidate timed beside the start; a baseline timed once
    before the run and its target kept, a load spike then moved the target by 30% and left a seed unpruned)."""
    return PruneOptions(weights=o.weights, data=o.data, sr=o.sparse_epochs > 0, s=o.s, s_schedule="step", penalty="polar",
                        sparse_epochs=o.sparse_epochs, finetune_epochs=o.finetune_epochs, shortcuts=o.shortcuts,
                        round_to=o.round_to, allocation=o.allocation,
                        imgsz=o.imgsz, batch_size=o.batch_size, workers=o.workers, seed=o.seed,
                        latency_imgsz=o.imgsz, latency_threads=o.latency_threads, latency_runs=o.latency_runs,
                        latency_backend="onnxruntime", target_latency_ms=o.target_latency_ms,
                        target_speedup=0.0 if o.target_latency_ms else o.speedup,
                        target_tolerance=o.target_tolerance, distill_weight=o.distill_weight,
                        project=str(run_dir), name="plain", progress=o.progress)


def share_stages(src: Path, dst: Path) -> list[str]:
    """Copy the stages before the finetune (and the share search) from one pipeline folder to another, so a
    pipeline run there reuses them (records are keyed by content, not path); the names copied."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SHARED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def run_arm(popts: PruneOptions) -> tuple[dict[str, dict], str, float]:
    """One pipeline run to the latency target; ({stage: row}, note, the closest latency the search measured when the
    target was out of reach, else nan). A target out of reach is not an error here: the arm is pruned at the
    largest share instead and the note says by how much the target was missed."""
    try:
        return {r["stage"]: r for r in run_pipeline(popts)}, "", math.nan
    except TargetUnreachable as e:
        run_dir = Path(popts.project) / popts.name
        source = model_from_checkpoint(run_dir / ("sparse.pt" if popts.sr else "baseline.pt"))
        if popts.shortcuts == "auto":  # out of reach even with every block removed: remove them all
            popts.shortcuts = len(rank_shortcuts(source))
        popts.target_latency_ms, popts.target_speedup = 0.0, 0.0
        popts.global_percent = largest_share(source, popts.layer_keep)
        LOGGER.warning(f"{e}; pruning at the largest share {popts.global_percent:.4f} instead")
        return {r["stage"]: r for r in run_pipeline(popts)}, f"target out of reach: {e}", e.closest


def onnx_latency_ms(model: nn.Module, o: DeployOptions, path: Path) -> float:
    return model_latency(model, o.imgsz, o.latency_threads, o.latency_runs, "onnxruntime", path).median


def tp_targets(o: DeployOptions) -> list[tuple[str, str, float]]:
    """(row key, importance, latency aimed at as a multiple of ours) of each Torch-Pruning row: ours, and with a
    bracket also a little slower."""
    out = [(key, key, 1.0) for key in o.tp]
    if o.tp_bracket > 0:
        out += [(key + SLOW, key, 1.0 + o.tp_bracket) for key in o.tp]
    return out


def latency_vs_ours(o: DeployOptions, reference: dict[str, Path], path: Path) -> Callable[[nn.Module], float]:
    """A candidate's onnxruntime latency as a multiple of ours ('ours' in `reference`), each candidate timed in one
    interleaved loop with the reference files (ours and the baseline): the regime of the final loop. Timed alone,
    a model reads faster than in that loop, and not by the same factor for every model (seed 0 at 1.3x: ours 0.80 ms
    alone, Torch-Pruning bisected to it, and then 7-10% slower than Torch-Pruning in the final loop)."""
    def cost(model: nn.Module) -> float:
        lat = cpu_latency({}, o.imgsz, o.latency_threads, runs=o.latency_runs,
                          onnx={**reference, "candidate": export_onnx(model, path, imgsz=o.imgsz)})
        return lat["candidate"].median / lat["ours"].median
    return cost


def run_tp(o: DeployOptions, popts: PruneOptions, reference: dict[str, Path], clock: Clock) -> dict[str, dict]:
    """Torch-Pruning rows: each importance's ratio bisected until its latency, paired with our pruned model's
    (latency_vs_ours), matches ours (with a bracket, once more to a little slower), then finetuned as long as our
    arm trained after the baseline. {row key: {'model', 'ratio', 'search_vs_ours', 'note', ...}}."""
    tp_opts = replace(popts, name="tp", target_latency_ms=0.0, target_speedup=0.0, sr=False)
    pipe = Pipeline(tp_opts)
    base = load_weights(tp_opts, pipe.data["nc"])
    epochs = o.sparse_epochs + o.finetune_epochs
    cost = latency_vs_ours(o, reference, pipe.run_dir / "candidate.onnx")
    out = {}
    for row, key, aim in tp_targets(o):
        print(f"--- {LABELS[row]}: bisecting the ratio to {aim:.2f}x our latency, timed beside ours in onnxruntime "
              f"(+-{o.target_tolerance:.0%}) ---", flush=True)
        try:
            model, match = clock(f"search {row}", lambda k=key, a=aim: match_gflops(
                lambda r: tp_prune(base, k, r, o.tp_steps, pipe.round_to, o.imgsz), cost, a, o.target_tolerance,
                hi=TP_MAX_RATIO, unit="x ours"))
            ratio, vs_ours = match.ratio, match.gflops
            note = "" if abs(match.error) <= o.target_tolerance else \
                f"{row}: the closest ratio {ratio:.3f} is {match.error:+.1%} off {aim:.2f}x our latency"
        except TPBenchError as e:  # slower than the aim even at its largest ratio: its fastest model is shown
            ratio = TP_MAX_RATIO
            model = tp_prune(base, key, ratio, o.tp_steps, pipe.round_to, o.imgsz)
            vs_ours = cost(model)
            note = f"{row}: cannot reach {aim:.2f}x our latency ({e}); shown at its largest ratio"
            LOGGER.warning(note)
        print(f"--- finetune {row} ({epochs} epochs) ---", flush=True)
        tuned = clock(f"finetune {row}", lambda r=row, m=model: pipe._fit(f"finetune_{r}", m, pipe.ft_hyp, epochs,
                                                                         tp_opts.finetune_optimizer))
        metrics = validate(tuned, pipe.val_loader, names=pipe.data["names"], progress=False)
        out[row] = {"model": tuned, "ratio": ratio, "search_vs_ours": vs_ours, "mAP50-95": float(metrics["mAP50-95"]),
                    "mAP50": float(metrics["mAP50"]), "epochs": epochs, "note": note}
    return out


def run(o: DeployOptions) -> dict:
    """Baseline -> pruned -> distilled -> INT8, Torch-Pruning beside; all timed together. Returns the report."""
    if o.tp:
        _torch_pruning()  # fail before any training
    clock, t0 = Clock(), time.perf_counter()
    run_dir = Path(o.project) / o.name
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {**machine(), "options": asdict(o), "torch_pruning": _tp_version() if o.tp else ""}
    print(f"deploy bench {meta['date']} on {machine_line(meta)}; weights {o.weights}; {o.imgsz} px", flush=True)

    check_prune_options(prune_options(o, run_dir))  # fail before the baseline is timed
    base = model_from_checkpoint(o.weights)
    base_ms = onnx_latency_ms(base, o, run_dir / "baseline_timing.onnx") if not o.target_latency_ms else None
    target_ms = o.target_latency_ms or base_ms / o.speedup
    popts = prune_options(o, run_dir)
    print(f"--- budget: onnxruntime latency <= {target_ms:.3f} ms at {o.imgsz} px"
          + (f" (baseline {base_ms:.3f} ms / {o.speedup:g})" if base_ms else "") + " ---", flush=True)

    plain, plain_note, closest_ms = clock("plain arm", lambda: run_arm(popts))
    # the other arms take the same stages and search: --shortcuts auto again (the plain run set its count), so the
    # search is reused
    in_reach = bool(popts.target_latency_ms or popts.target_speedup)
    shortcuts = o.shortcuts if in_reach else popts.shortcuts
    refilled, refill_note = {}, ""
    if o.refill:
        share_stages(run_dir / "plain", run_dir / "refill")
        ropts = replace(popts, name="refill", refill=True, shortcuts=shortcuts)
        if not in_reach:  # out of reach: the plain arm is at its floor; give back what costs nothing there
            ropts.target_latency_ms = closest_ms
            refill_note = (f"refill: the target out of reach, the refill arm aimed at the floor's own "
                           f"{closest_ms:.3f} ms (the closest the search measured)")
        refilled, note, _ = clock("refill arm", lambda: run_arm(ropts))
        refill_note = "; ".join(x for x in (refill_note, note) if x)
    distill, int8 = {}, {}
    if o.distill:
        share_stages(run_dir / "plain", run_dir / "distill")
        distill, _, _ = clock("distill arm", lambda: run_arm(replace(popts, name="distill", distill=True, shortcuts=shortcuts)))
        int8 = json.loads((run_dir / "distill" / INT8_JSON).read_text())
    # Torch-Pruning at our latency (the target, or the fastest we reached when it was out of reach), each candidate
    # timed beside ours and the baseline
    reference = {"ours": export_onnx(model_from_checkpoint(run_dir / "plain" / "finetune.pt"),
                                     run_dir / "ours_timing.onnx", imgsz=o.imgsz),
                 "baseline": export_onnx(base, run_dir / "baseline_timing.onnx", imgsz=o.imgsz)}
    ours_ms = cpu_latency({}, o.imgsz, o.latency_threads, runs=o.latency_runs, onnx=reference)["ours"].median
    tp = clock("Torch-Pruning", lambda: run_tp(o, popts, reference, clock)) if o.tp else {}

    deployables = {"baseline": (model_from_checkpoint(run_dir / "plain" / "baseline.pt"), plain["baseline"]),
                   "pruned": (model_from_checkpoint(run_dir / "plain" / "finetune.pt"), plain["finetune"])}
    for key, folder, arm in (("refilled", "refill", refilled), ("distilled", "distill", distill)):
        if arm:
            deployables[key] = (model_from_checkpoint(run_dir / folder / "finetune.pt"), arm["finetune"])
    (run_dir / "onnx").mkdir(parents=True, exist_ok=True)
    files = {k: export_onnx(m, run_dir / "onnx" / f"{k}.onnx", imgsz=o.imgsz) for k, (m, _) in deployables.items()}
    if int8:
        files["int8"] = run_dir / "distill" / "int8" / "finetune.int8.onnx"
    files.update({k: export_onnx(v["model"], run_dir / "onnx" / f"{k}.onnx", imgsz=o.imgsz)
                  for k, v in tp.items()})
    print(f"--- latency: {len(files)} onnx files interleaved, {o.final_runs} rounds, batch 1, {o.imgsz} px, "
          f"{o.latency_threads} thread(s) ---", flush=True)
    lat = clock("latency", lambda: cpu_latency({}, o.imgsz, o.latency_threads, runs=o.final_runs, onnx=files))

    ours_epochs = o.sparse_epochs + o.finetune_epochs
    rows = [{"model": k, "mAP50-95": r["mAP50-95"], "mAP50": r["mAP50"], "params": r["params"],
             "epochs": 0 if k == "baseline" else ours_epochs} for k, (_, r) in deployables.items()]
    if int8:
        rows.append({"model": "int8", "mAP50-95": int8["mAP50-95"], "mAP50": int8["mAP50"],
                     "params": distill["finetune"]["params"], "epochs": ours_epochs})
    rows += [{"model": k, "mAP50-95": v["mAP50-95"], "mAP50": v["mAP50"], "ratio": v["ratio"],
              "params": param_count(v["model"]), "epochs": v["epochs"], "note": v["note"]}
             for k, v in tp.items()]
    for row in rows:
        ms = lat[row["model"]]
        row.update(ms=ms.median, p25_ms=ms.p25, p75_ms=ms.p75, speedup=lat["baseline"].median / ms.median,
                   onnx_MB=files[row["model"]].stat().st_size / 1e6)
    clock.seconds["total"] = time.perf_counter() - t0
    search = json.loads((run_dir / "plain" / "target.json").read_text()) if (run_dir / "plain" / "target.json").is_file() else {}
    if search.get("start_ms"):  # --speedup: the target the pipeline set from its own timing of the start
        base_ms, target_ms = search["start_ms"], search["target"]["value"]
    filled = run_dir / "refill" / "refill.json"
    refill_record = json.loads(filled.read_text()) if refilled and filled.is_file() else {}
    report = {"meta": meta, "rows": rows, "target_ms": target_ms, "baseline_search_ms": base_ms, "tp_target_ms": ours_ms,
              "tp_search": "paired",
              "share": popts.global_percent, "shortcuts": popts.shortcuts, "search": {k: search.get(k) for k in ("share", "achieved", "met")},
              "refill": {k: refill_record.get(k) for k in ("grow", "channels_added")} if refill_record else None,
              "plain_note": plain_note, "refill_note": refill_note, "tp_notes": {k: v["note"] for k, v in tp.items()}, "seconds": clock.seconds}
    write_json(report, run_dir / "deploy.json")
    return report


def reach(weights: str, imgsz: int, shares: Sequence[float], shortcuts: Sequence[int], threads: int = 1,
          runs: int = 30, out_dir: Path = Path("runs/deploy/reach"), round_to: str | int = "auto") -> list[dict]:
    """What our pruner can reach at all, no training: the onnxruntime latency of the model pruned at each share
    (the largest added) with each number of shortcut blocks removed, all timed in one interleaved loop. At the
    largest share every coupled group keeps only its floor (rounded to the conv block), whatever the weights."""
    base = model_from_checkpoint(weights).float().eval()
    masks = MaskOptions(0.0, PruneOptions.layer_keep, resolve_round_to(round_to, "cpu")[0])
    n_shortcuts = len(rank_shortcuts(base))
    top = largest_share(base, masks.layer_keep)
    models, rows = {"baseline": base}, [{"model": "baseline", "share": 0.0, "shortcuts": 0, "round_to": masks.round_to}]
    for sc in sorted({min(n, n_shortcuts) for n in shortcuts}):
        for share in sorted({*shares, top}):
            key = f"{share:.4f}/{sc}"
            models[key] = pruned_at(base, min(share, top), masks, sc)
            rows.append({"model": key, "share": min(share, top), "shortcuts": sc})
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {k: export_onnx(m, out_dir / f"{i}.onnx", imgsz=imgsz) for i, (k, m) in enumerate(models.items())}
    lat = cpu_latency({}, imgsz, threads, runs=runs, onnx=files)
    for row in rows:
        m, ms = models[row["model"]], lat[row["model"]]
        row.update(GFLOPs=model_gflops(m, imgsz), params=param_count(m), ms=ms.median,
                   p25_ms=ms.p25, p75_ms=ms.p75, speedup=lat["baseline"].median / ms.median)
    return rows


def reach_table(rows: list[dict], imgsz: int, weights: str, runs: int) -> str:
    base = rows[0]
    body = [["baseline" if r is base else f"{r['share']:.4f}", r["shortcuts"], f"{r['GFLOPs']:.4f}",
             f"{base['GFLOPs'] / r['GFLOPs']:.2f}x", f"{r['params']:,}", f"{r['ms']:.3f} ({r['p25_ms']:.3f}-{r['p75_ms']:.3f})",
             f"{r['speedup']:.2f}x"] for r in rows]
    best = max(rows, key=lambda r: r["speedup"])
    header = ["global share", "shortcut blocks removed", f"GFLOPs ({imgsz} px)", "FLOPs ratio", "params",
              f"ORT ms ({imgsz} px, 1 thr): median (p25-p75)", "speedup"]
    note = (f"Reach of the pruner, no training: {weights} pruned at each share (the last: the largest, every group at "
            f"its floor; kept channels rounded up to a multiple of {base.get('round_to', '?')}) "
            f"and timed in one interleaved loop of {runs} rounds. Fastest: share {best['share']:.4f} with "
            f"{best['shortcuts']} blocks removed, {best['speedup']:.2f}x.")
    return "\n".join([markdown_table(header, body), "", note])




def meets(row: dict, base: dict, speedup: float, max_drop: float) -> bool:
    """The budget: at least `speedup` times faster than the baseline and at most `max_drop` mAP50-95 below it."""
    return row["speedup"] >= speedup and row["mAP50-95"] >= base["mAP50-95"] - max_drop


def versus_tp(ours: list[dict], tp: dict) -> str:
    """One Torch-Pruning row against our most accurate model at least as fast in the same loop: the comparison at
    equal latency (the bisection aims Torch-Pruning at our latency, but a busy host can leave it slower or faster)."""
    name = f"{LABELS[tp['model']]} ({tp['mAP50-95']:.4f} at {tp['speedup']:.2f}x)"
    fast = [r for r in ours if r["speedup"] >= tp["speedup"]]
    if not fast:
        top = max(ours, key=lambda r: r["speedup"])
        better = "and more accurate" if tp["mAP50-95"] > top["mAP50-95"] else "but less accurate"
        return (f"vs {name}: it is faster than every model of ours (our fastest {LABELS[top['model']]} "
                f"{top['speedup']:.2f}x, {top['mAP50-95']:.4f}) {better} (one seed)")
    mine = max(fast, key=lambda r: r["mAP50-95"])
    gap = mine["mAP50-95"] - tp["mAP50-95"]
    return (f"vs {name}: ours {'ahead' if gap > 0 else 'NOT ahead'} by {gap:+.4f} at {mine['speedup']:.2f}x "
            f"({LABELS[mine['model']]}, at least as fast; one seed)")


def tp_at_our_latency(rows: list[dict], mine: str) -> dict[str, dict]:
    """Each Torch-Pruning importance's mAP50-95 at the final-loop latency of our row `mine`, read off its two rows
    (aimed at our latency, and `tp_bracket` slower): linear in ms between them when their latencies bracket ours;
    when both are slower than ours, the faster one's figure, an upper bound on the assumption that pruning less does
    not cost accuracy; none when both are faster (then nothing bounds it from above). {importance: {'mAP50-95',
    'how': 'interpolated' | 'upper bound', 'ms': (faster, slower)}}; importances without both rows are left out."""
    by = {r["model"]: r for r in rows}
    if mine not in by:
        return {}
    at = by[mine]["ms"]
    out = {}
    for key in TP_IMPORTANCE:
        if key not in by or key + SLOW not in by:
            continue
        fast, slow = sorted((by[key], by[key + SLOW]), key=lambda r: r["ms"])
        if fast["ms"] <= at <= slow["ms"]:
            w = (at - fast["ms"]) / (slow["ms"] - fast["ms"]) if slow["ms"] > fast["ms"] else 0.0
            value, how = fast["mAP50-95"] + w * (slow["mAP50-95"] - fast["mAP50-95"]), "interpolated"
        elif at < fast["ms"]:
            value, how = fast["mAP50-95"], "upper bound"
        else:
            continue
        out[key] = {"mAP50-95": value, "how": how, "ms": (fast["ms"], slow["ms"])}
    return out


def at_our_latency_lines(rows: list[dict]) -> list[str]:
    """The table's lines for tp_at_our_latency: ours against Torch-Pruning read at our own latency."""
    by = {r["model"]: r for r in rows}
    lines = []
    for mine in (m for m in ("pruned", "refilled") if m in by):
        read = tp_at_our_latency(rows, mine)
        for key in TP_IMPORTANCE:
            if key in by and key + SLOW in by and key not in read:
                lines.append(f"{LABELS[key]} at the latency of {LABELS.get(mine, mine)}: not bracketed (both of its "
                             f"rows are faster: {by[key]['speedup']:.2f}x, {by[key + SLOW]['speedup']:.2f}x "
                             f"against {by[mine]['speedup']:.2f}x)")
            elif key in read:
                r = read[key]
                gap = by[mine]["mAP50-95"] - r["mAP50-95"]
                sign = "<= " if r["how"] == "upper bound" else ""
                lines.append(f"{LABELS[key]} at the latency of {LABELS.get(mine, mine)} ({by[mine]['speedup']:.2f}x; "
                             f"{r['how']} from its rows at {r['ms'][0]:.3f} and {r['ms'][1]:.3f} ms): {sign}"
                             f"{r['mAP50-95']:.4f}; ours {'ahead' if gap > 0 else 'NOT ahead'} by {gap:+.4f} (one seed)")
    return lines


def table(report: dict) -> str:
    """The markdown table and the verdict lines of a report (a pure function of its json)."""
    o, rows = report["meta"]["options"], report["rows"]
    base = next(r for r in rows if r["model"] == "baseline")
    speedup = o["speedup"] if not o["target_latency_ms"] else base["ms"] / o["target_latency_ms"]
    header = ["model", "mAP50-95", "Δ vs baseline", "mAP50",
              f"ORT ms ({o['imgsz']} px, {o['latency_threads']} thr): median (p25-p75)", "speedup", "params", "ONNX MB", "epochs after baseline", "meets budget"]
    body = [[LABELS.get(r["model"], r["model"]) + (f" (ratio {r['ratio']:.3f})" if "ratio" in r else ""),
             f"{r['mAP50-95']:.4f}", f"{r['mAP50-95'] - base['mAP50-95']:+.4f}", f"{r['mAP50']:.4f}",
             f"{r['ms']:.3f} ({r['p25_ms']:.3f}-{r['p75_ms']:.3f})", f"{r['speedup']:.2f}x", f"{r['params']:,}",
             f"{r['onnx_MB']:.2f}", r["epochs"], "-" if r is base else
             ("yes" if meets(r, base, speedup, o["max_drop"]) else "no")] for r in rows]
    s = report["search"]
    lines = [markdown_table(header, body), "",
             f"Budget: >= {speedup:.2f}x faster than the baseline in onnxruntime (target {report['target_ms']:.3f} ms"
             + (f", from the baseline's {report['baseline_search_ms']:.3f} ms before the run" if report["baseline_search_ms"] else "")
             + f") with mAP50-95 >= {base['mAP50-95'] - o['max_drop']:.4f} (baseline - {o['max_drop']:g}). "
             + (f"Ours: sparse {o['sparse_epochs']} epochs (polar, s {o['s']:g}, step), " if o["sparse_epochs"] else
                "Ours: no sparse stage, ") + f"global share {report['share']:.4f} "
             + (f"(allocation {o['allocation']}) " if o.get("allocation", "global") != "global" else "")
             + (f"searched to the target ({s['achieved']:.3f} ms in the search)" if s.get("achieved") else
                "(the largest: the target is out of reach)")
             + f", {report.get('shortcuts', o['shortcuts'])} shortcut blocks removed"
             + (" (the fewest that meet the budget)" if o["shortcuts"] == "auto" else "") + f", finetune {o['finetune_epochs']} epochs"
             + (f"; refill: +{report['refill']['channels_added']} channels in "
                f"{sum(v > 0 for v in report['refill']['grow'].values())} groups, each kept when the grown model timed "
                f"at most 1% slower than the searched one, checked again in a 10x longer loop" if report.get("refill") else "")
             + (f"; distillation weight {o['distill_weight']:g}; INT8 = the distilled model, onnxruntime static QDQ"
                if o.get("distill", True) else "") + ". Torch-Pruning: from the same "
             f"checkpoint, ratio bisected to our pruned model's latency ({report.get('tp_target_ms', 0):.3f} ms"
             + (", each candidate timed beside ours" if report.get("tp_search") == "paired" else "") + ")"
             + (f" and to {1 + o['tp_bracket']:.2f}x it (the rows 'slower')" if o.get("tp_bracket") else "")
             + f", {o['tp_steps']} steps, finetuned {o['sparse_epochs'] + o['finetune_epochs']} "
             f"epochs. One seed ({o['seed']}); speedups from one interleaved loop of {o['final_runs']} rounds."]
    ours = [r for r in rows if r["model"] in OURS]
    met = [r for r in ours if meets(r, base, speedup, o["max_drop"])]
    best = max(met or ours, key=lambda r: (r["mAP50-95"], r["speedup"]) if met else r["speedup"])
    lines.append(f"Verdict: {'met' if met else 'NOT met'} — {LABELS[best['model']]}: {best['speedup']:.2f}x, "
                 f"mAP50-95 {best['mAP50-95']:.4f} ({best['mAP50-95'] - base['mAP50-95']:+.4f})"
                 + ("" if met else " (the fastest of ours)"))
    lines += [versus_tp(ours, r) for r in rows if r["model"] in TP_ROWS]
    lines += at_our_latency_lines(rows)
    for note in [report.get("plain_note"), report.get("refill_note"), *report.get("tp_notes", {}).values()]:
        if note:
            lines.append(f"Note: {note}")
    lines.append("wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()))
    return "\n".join(lines)


SEED_FREE = ("seed", "project", "name", "progress", "record")  # options that may differ between the seeds of one table
PREDATED = {"tp_bracket": 0.0}  # options whose default changed since runs recorded without them: how those ran


def seeded_table(reports: list[dict], where: list[str]) -> str:
    """Several runs of one budget and checkpoint, one per seed (`--seeded DIR ...`): every model's mAP50-95 and
    speedup as mean ± sd over the seeds, and ours (pruned to target) against each Torch-Pruning arm, paired by
    seed: mean ± sd of the difference, t with n-1 df, two-sided p. Runs that differ in more than the seed are
    refused, naming the option."""
    from bench.seeded_peers import mean_sd, paired_t  # one paired t test for the benches

    if len(reports) < 2:
        raise DeployError(f"--seeded needs two or more run folders, got {len(reports)}")
    default = {**asdict(DeployOptions()), **PREDATED}  # an option a run predates: how it ran without it
    first = {**default, **reports[0]["meta"]["options"]}
    for rep, folder in zip(reports[1:], where[1:]):
        o = {**default, **rep["meta"]["options"]}
        for key in sorted(set(first) | set(o)):
            if key not in SEED_FREE and first.get(key) != o.get(key):
                raise DeployError(f"--seeded: {folder} differs from {where[0]} in {key} ({o.get(key)!r} vs "
                                  f"{first.get(key)!r}): the seeds of one table share everything but the seed")
    seeds = [rep["meta"]["options"]["seed"] for rep in reports]
    if len(set(seeds)) < len(seeds):
        raise DeployError(f"--seeded: seeds {seeds} repeat: each folder must be another seed")
    by_model = [{r["model"]: r for r in rep["rows"]} for rep in reports]
    models = [m for m in (r["model"] for r in reports[0]["rows"]) if all(m in b for b in by_model)]
    body = []
    for m in models:
        maps, speeds = [b[m]["mAP50-95"] for b in by_model], [b[m]["speedup"] for b in by_model]
        (mean, sd), (sp, sp_sd) = mean_sd(maps), mean_sd(speeds)
        body.append([LABELS.get(m, m), f"{mean:.4f} ± {sd:.4f}", " / ".join(f"{v:.4f}" for v in maps),
                     f"{sp:.2f}x ± {sp_sd:.2f}", " / ".join(f"{v:.2f}x" for v in speeds)])
    lines = [f"Seeds {', '.join(map(str, seeds))}: {len(reports)} runs of `bench.deploy` with one budget and one "
             f"checkpoint ({first.get('weights')}); mean ± sd over the seeds (sample sd).", "",
             markdown_table(["model", "mAP50-95", "per seed", "speedup (ORT)", "per seed"], body)]
    pairs = []
    ours = [m for m in ("pruned", "refilled") if m in models]
    versus = [(m, tp) for m in ours for tp in models if tp in TP_IMPORTANCE]
    versus += [("refilled", "pruned")] if "refilled" in models else []
    for mine, other in versus:
        t = paired_t([b[mine]["mAP50-95"] for b in by_model], [b[other]["mAP50-95"] for b in by_model])
        faster = sum(b[mine]["speedup"] >= b[other]["speedup"] for b in by_model)
        pairs.append([f"{LABELS[mine]} - {LABELS[other]}", t["n"], f"{t['mean']:+.4f} ± {t['sd']:.4f}",
                      f"{t['t']:.2f}", f"{t['p']:.3f}", "yes" if t["p"] < 0.05 else "no",
                      f"{faster}/{len(by_model)}"])
    for mine in ours:  # Torch-Pruning read at our own latency, seed by seed (its two rows; tp_at_our_latency)
        reads = [tp_at_our_latency(rep["rows"], mine) for rep in reports]
        for key in TP_IMPORTANCE:
            have = [(b[mine]["mAP50-95"], r[key]) for b, r in zip(by_model, reads) if key in r]
            if not any(key + SLOW in b for b in by_model):
                continue
            t = paired_t([a for a, _ in have], [r["mAP50-95"] for _, r in have])
            bounds = sum(r["how"] == "upper bound" for _, r in have)
            pairs.append([f"{LABELS[mine]} - {LABELS[key]} at our latency", t["n"], f"{t['mean']:+.4f} ± {t['sd']:.4f}",
                          f"{t['t']:.2f}", f"{t['p']:.3f}", "yes" if t["p"] < 0.05 else "no",
                          f"equal (read at ours; {len(have)}/{len(by_model)} seeds bracketed or bounded"
                          + (f", {bounds} by the upper bound" if bounds else "") + ")"])
    if pairs:
        lines += ["", markdown_table(["paired difference (mAP50-95)", "n", "mean ± sd", "t (n-1 df)", "p (two-sided)",
                                      "beyond the spread (p < 0.05)", "seeds where ours is at least as fast"], pairs)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> DeployOptions | argparse.Namespace:
    d = DeployOptions()
    p = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", default=d.weights, help="trained checkpoint (default: the quick study's 30-epoch "
                   "base run, trained once into runs/evolve/bench-base)")
    p.add_argument("--data", type=t.existing_file, default=d.data, help="data yaml (default: the built-in dataset)")
    p.add_argument("--speedup", type=t.non_negative_float, default=d.speedup, help="budget: baseline ORT latency / this")
    p.add_argument("--target-latency-ms", type=t.non_negative_float, default=d.target_latency_ms,
                   help="budget in ms instead of --speedup (0 = use --speedup)")
    p.add_argument("--max-drop", type=t.non_negative_float, default=d.max_drop, help="allowed mAP50-95 drop")
    p.add_argument("--imgsz", type=t.positive_int, default=d.imgsz, help="the deploy size: train, validate, time")
    for key in ("sparse_epochs", "finetune_epochs", "tp_steps", "batch_size", "workers"):
        p.add_argument("--" + key.replace("_", "-"), type=t.non_negative_int, default=getattr(d, key))
    p.add_argument("--shortcuts", type=shortcuts_arg, default=d.shortcuts,
                   help="shortcut blocks to remove, or 'auto': the fewest that let the share meet the budget")
    p.add_argument("--s", type=t.non_negative_float, default=d.s, help="sparsity rate of the sparse stage")
    p.add_argument("--round-to", type=lambda v: v if v == "auto" else t.positive_int(v), default=d.round_to,
                   help="kept channels rounded up to a multiple of this (auto: the machine's conv block)")
    p.add_argument("--distill-weight", type=t.non_negative_float, default=d.distill_weight)
    p.add_argument("--allocation", choices=[a for a in ALLOCATIONS if a != "sensitivity"], default=d.allocation,
                   help="what the global threshold ranks: |gamma|, LAMP scores, or weight L1 (prune/allocation.py)")
    p.add_argument("--no-distill", dest="distill", action="store_false", help="no distillation and INT8 rows")
    p.add_argument("--refill", action="store_true", help="a row pruned to the target with channels given back where "
                   "they cost no latency (prune --refill), finetuned as the plain one")
    p.add_argument("--tp", nargs="*", choices=list(TP_IMPORTANCE), default=d.tp, help="Torch-Pruning importances")
    p.add_argument("--tp-bracket", type=t.non_negative_float, default=d.tp_bracket, help="a second Torch-Pruning "
                   "row per importance bisected to our latency x (1 + this), to read its accuracy at our exact "
                   "latency between two rows (0: one row)")
    p.add_argument("--no-tp", dest="tp", action="store_const", const=[], help="no Torch-Pruning rows")
    p.add_argument("--target-tolerance", type=t.fraction, default=d.target_tolerance)
    p.add_argument("--latency-threads", type=t.positive_int, default=d.latency_threads)
    p.add_argument("--latency-runs", type=t.positive_int, default=d.latency_runs, help="per search candidate")
    p.add_argument("--final-runs", type=t.positive_int, default=d.final_runs, help="rounds of the final loop")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--project", default=d.project)
    p.add_argument("--name", default=d.name)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="do not append the table to bench/results/deploy.md")
    p.add_argument("--reach", action="store_true", help="only time the pruned model at a few shares and shortcut "
                   "counts, no training: the fastest our pruner can make this model (needs --weights)")
    p.add_argument("--report-only", metavar="RUN_DIR", help="render RUN_DIR/deploy.json's table again (and record it "
                   "unless --no-record); nothing is trained or timed")
    p.add_argument("--seeded", nargs="+", metavar="RUN_DIR", help="one table over several runs of one budget, one "
                   "seed each (their deploy.json): mean ± sd per model, ours vs Torch-Pruning paired by seed")
    args = vars(p.parse_args(argv))
    report_only, seeded = args.pop("report_only"), args.pop("seeded")
    if report_only or seeded:
        return argparse.Namespace(report_only=report_only, seeded=seeded, record=args["record"])
    if args.pop("reach"):
        if not args["weights"]:
            raise DeployError("--reach needs --weights")
        return argparse.Namespace(**args, report_only=None, seeded=None)
    opts = DeployOptions(**args)
    if opts.weights and not Path(opts.weights).is_file():
        raise DeployError(f"--weights {opts.weights}: file not found")
    if opts.speedup <= 1 and not opts.target_latency_ms:
        raise DeployError(f"--speedup {opts.speedup}: must be > 1 (a budget faster than the baseline)")
    return opts


@main_guard("bench.deploy")
def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    t0 = time.perf_counter()
    if isinstance(opts, argparse.Namespace) and opts.seeded:
        missing = [d for d in opts.seeded if not (Path(d) / "deploy.json").is_file()]
        if missing:
            raise DeployError(f"--seeded: no deploy.json in {', '.join(missing)}")
        reports = [json.loads((Path(d) / "deploy.json").read_text()) for d in opts.seeded]
        text = seeded_table(reports, opts.seeded)
        print(text)
        if opts.record:
            record("deploy", text, reports[0]["meta"], command_line("bench.deploy", argv))
        return 0
    if isinstance(opts, argparse.Namespace) and opts.report_only:
        report = json.loads((Path(opts.report_only) / "deploy.json").read_text())
        text = table(report)
        print(text)
        if opts.record:
            record("deploy", text + f"\n(rendered again from {opts.report_only}/deploy.json: the run of "
                   f"{report['meta']['date']})", report["meta"], command_line("bench.deploy", argv))
        return 0
    if isinstance(opts, argparse.Namespace):  # --reach
        rows = reach(opts.weights, opts.imgsz, REACH_SHARES, (0, 5 if opts.shortcuts == "auto" else opts.shortcuts, 99),
                     opts.latency_threads,
                     opts.final_runs, Path(opts.project) / opts.name / "reach", opts.round_to)
        text = reach_table(rows, opts.imgsz, opts.weights, opts.final_runs)
        print(text)
        if opts.record:
            record("deploy", text, machine(), command_line("bench.deploy", argv))
        return 0
    if not opts.weights:  # a fresh clone: the quick study's base run, shared with make bench-tp and bench-search
        opts.weights = shared_start("studies/quick.yaml", {"gpus": "cpu"})["weights"]
    report = run(opts)
    text = table(report)
    print(text)
    if opts.record:
        record("deploy", text, report["meta"], command_line("bench.deploy", argv))
    run_dir = Path(opts.project) / opts.name
    arms = ["plain"] + ["refill"] * opts.refill + ["distill"] * opts.distill + ["tp"] * bool(opts.tp)
    print(f"\npipeline folders {', '.join(str(run_dir / a) for a in arms)}"
          + f"; onnx files {run_dir / 'onnx'}; report {run_dir / 'deploy.json'}; "
          f"{datetime.timedelta(seconds=round(time.perf_counter() - t0))} in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
