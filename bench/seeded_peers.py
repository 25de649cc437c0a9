"""Seeded comparison of trainers on held-out sets (issue 31): mAP50-95 over seeds, paired t tests, cls loss curves.

`python -m bench.seeded_peers --sets glyphs,lookalikes --seeds 0,1,2 --epochs 30 --name fine_grained` trains every
(seed, set, arm) at the same command (imgsz, batch, workers, epochs; each engine's defaults otherwise) through
bench.peers' runner, seeds outermost so that a cut run still holds complete seeds. An arm is `ENGINE:MODEL`:
- `ours:studies/models/yolov5n-af.yaml`  our trainer, any model yaml (here the anchor-free decoupled head);
- `ultralytics:yolov5n.yaml`             Ultralytics in the peer venv (.venv-peer), built from the yaml, no weights;
- `yolov5:yolov5n.yaml`                  YOLOv5 v7.0 itself in the peer venv (bench.peers' yolov5-v7; its mAP is
                                          YOLOv5's own count, multi-label, see bench/peers.py);
- `ours:studies/models/yolov5n.yaml:studies/hyp/ablation/cls-over-classes.yaml`  ours with a hyp file (ablations).

`--recipe SGD|AdamW` trains every arm with one recipe (issue 31's "same recipe, same result as YOLOv5 v7.0"):
YOLOv5's hyp.scratch-low (studies/hyp/recipe/, AdamW at one lr0) and that optimizer for ours and for YOLOv5 v7.0,
ours with YOLOv5's behaviour where we differ by default (no close-mosaic, no AutoMosaic). Both engines' mAP are
then counted YOLOv5's way (multi-label NMS, interpolated AP): ours' best.pt and last.pt are validated again with
`core.val --multi-label --ap-method yolov5`; YOLOv5's figures are its own results.csv (its checkpoints are pickled
models, which we do not load). Ours' best.pt is the best epoch by fitness under our counting, YOLOv5's figure the
best epoch under its own, so the comparison leans, if anything, YOLOv5's way.

It records to bench/results/<name>.md (bench.record): per set and arm the best epoch's mAP50-95 (as issue 31
reads it) and the last epoch's, mean +- sd over seeds with every seed's value; per pair of arms the paired
difference over the seeds both finished, its sd and a two-sided t test with n-1 df (seeds pair by number only:
the engines draw different random streams from one seed); and the per-epoch train cls loss (each engine's own
scale, so it is compared as a fraction of its first epoch): the epoch-1 value, the value at the end of the
first third of training and the last, with whether it fell at least FALL of its epoch-1 value by that third.
The curves go to bench/results/<name>_<run folder's name>_cls_loss.png (the section names it; a run folder
recorded again rewrites its own, no other section's).
Rows are kept in <out>/seeded.json after every run, so `--out` of a cut run resumes it (finished runs are
kept) and `--report-only <out>` prints the tables again.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen
import pandas as pd

from bench.heldout import SETS, generate_heldout
from core.data.config import DEFAULT_DATA, load_data_config
from bench.peers import REPO, YOLOV5_V7, RunSpec, measure, warm_up
import bench.record  # its RESULTS read at run time: tests point it elsewhere
from bench.record import command_line, machine, markdown_table, record
from evolve.stats import t_sf

ENGINES = ("ours", "ultralytics", "yolov5")
TRAINER = {"ours": "ours", "ultralytics": "ultralytics", "yolov5": YOLOV5_V7}  # bench.peers' name
DEFAULT_ARMS = "ours:studies/models/yolov5n-af.yaml,ultralytics:yolov5n.yaml,ours:studies/models/yolov5n.yaml"
FALL = 0.10  # "the cls loss falls": at least 10% below its first epoch by the end of the first third
RECIPES = {"SGD": "studies/hyp/recipe/yolov5-sgd.yaml", "AdamW": "studies/hyp/recipe/yolov5-adamw.yaml"}
OURS_AS_YOLOV5 = ("--close-mosaic", "0", "--no-automosaic")  # our two defaults that YOLOv5 v7.0 does not have
CLS_COLUMN = {"ours": "train_cls", "ultralytics": "train/cls_loss", "yolov5": "train/cls_loss"}


def parse_arm(text: str) -> tuple[str, str, str, str]:
    """'ours:studies/models/yolov5n-af.yaml' -> (label 'ours yolov5n-af', engine 'ours', model, hyp '');
    'ours:MODEL:HYP' adds our trainer's --hyp HYP, its stem ending the label."""
    engine, sep, rest = text.partition(":")
    model, _, hyp = rest.partition(":")
    if not sep or engine not in ENGINES or not model:
        raise ValueError(f"arm {text!r}: want ENGINE:MODEL[:HYP] with ENGINE one of {', '.join(ENGINES)}")
    if hyp and engine != "ours":
        raise ValueError(f"arm {text!r}: a hyp file is for our trainer only (ours:MODEL:HYP)")
    return f"{engine} {Path(model).stem}" + (f" {Path(hyp).stem}" if hyp else ""), engine, model, hyp


def recipe_args(recipe: str, engine: str) -> tuple[str, ...]:
    """The flags that give one engine the recipe (--recipe); none without one."""
    if not recipe:
        return ()
    common = ("--hyp", str(REPO / RECIPES[recipe]), "--optimizer", recipe)
    return common + OURS_AS_YOLOV5 if engine == "ours" else common


def yolov5_counting(run_dir: Path, data: Path, imgsz: int) -> dict:
    """Our run's best.pt and last.pt validated YOLOv5's way, as the seeded row's mAP keys."""
    from core.val import run as validate  # imported here: only --recipe needs the validator

    counted = {}
    for key, ckpt in (("mAP50-95_best", "best.pt"), ("mAP50-95_last", "last.pt")):
        counted[key] = validate(["--weights", str(run_dir / ckpt), "--data", str(data), "--imgsz", str(imgsz),
                                 "--multi-label", "--ap-method", "yolov5", "--workers", "0"])["mAP50-95"]
    return counted


def cls_curve(run_dir: Path, engine: str) -> list[float]:
    """The per-epoch train cls loss of a finished run, from its results.csv."""
    df = pd.read_csv(run_dir / "results.csv")
    df.columns = [c.strip() for c in df.columns]
    return [float(v) for v in df[CLS_COLUMN[engine]]]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample sd (nan for fewer than 2 values)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def paired_t(a: list[float], b: list[float]) -> dict:
    """Paired difference a - b over n pairs: mean, sd of the differences, t with n-1 df, two-sided p."""
    if len(a) != len(b):
        raise ValueError(f"paired_t: {len(a)} and {len(b)} values")
    d = [x - y for x, y in zip(a, b)]
    mean, sd = mean_sd(d)
    n = len(d)
    if n < 2 or math.isnan(sd):
        return {"n": n, "mean": mean, "sd": sd, "t": math.nan, "p": math.nan}
    t = mean / (sd / math.sqrt(n)) if sd > 0 else math.copysign(math.inf, mean) if mean else math.nan
    p = 2 * t_sf(abs(t), n - 1) if t == t else math.nan
    return {"n": n, "mean": mean, "sd": sd, "t": t, "p": p}


def third_fall(curve: list[float]) -> dict:
    """Where the cls loss stands at the end of the first third of training, relative to epoch 1.

    third = the loss at epoch ceil(E/3) (1-based); `falls` when it is at least FALL below epoch 1's;
    `share` = the part of the whole run's fall (epoch 1 -> last) already made by then."""
    if not curve:
        return {"first": math.nan, "third": math.nan, "last": math.nan, "falls": False, "share": math.nan}
    first, third, last = curve[0], curve[math.ceil(len(curve) / 3) - 1], curve[-1]
    whole = first - last
    return {"first": first, "third": third, "last": last, "falls": first > 0 and third <= (1 - FALL) * first,
            "share": (first - third) / whole if whole > 0 else math.nan}


def _f(v: float, spec: str = ".4f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def report(rows: list[dict], meta: dict) -> str:
    """The markdown tables of a run, a pure function of its rows."""
    ok = [r for r in rows if r.get("rc") == 0]
    recipe = (f"; one recipe for every arm: {meta['recipe']} with {RECIPES[meta['recipe']]}, "
              f"mAP counted YOLOv5's way (multi-label, interpolated AP)") if meta.get("recipe") else ""
    lines = [f"seeded peer comparison: {meta.get('epochs')} epochs, imgsz {meta.get('imgsz')}, batch "
             f"{meta.get('batch')}, workers {meta.get('workers')}, seeds {meta.get('seeds')}; each engine's defaults "
             f"otherwise; mAP50-95 of the best epoch (last epoch beside it); cls loss: each engine's own scale, "
             f"'falls' = the epoch ceil(E/3) value <= {1 - FALL:.2f} x epoch 1's; curves: {meta.get('png', '-')}{recipe}"]
    if meta.get("not_run"):
        lines.append(f"\nplanned but not run (cut for time): {', '.join(meta['not_run'])}")
    failed = [r for r in rows if r.get("rc") != 0]
    if failed:
        lines.append("\nfailed runs (not counted): " + ", ".join(f"{r['set']} {r['arm']} seed {r['seed']} "
                                                                    f"(exit {r.get('rc')})" for r in failed))
    for s in dict.fromkeys(r["set"] for r in ok):
        arms = list(dict.fromkeys(r["arm"] for r in ok if r["set"] == s))
        by = {a: {r["seed"]: r for r in ok if r["set"] == s and r["arm"] == a} for a in arms}
        table = []
        for a in arms:
            seeds = sorted(by[a])
            best, last = ([by[a][k][key] for k in seeds] for key in ("mAP50-95_best", "mAP50-95_last"))
            falls = [third_fall(by[a][k]["cls_curve"]) for k in seeds]
            mb, sb = mean_sd(best)
            ml, sl = mean_sd(last)
            table.append((a, len(seeds), f"{_f(mb)} ± {_f(sb)}", " / ".join(_f(v) for v in best),
                          f"{_f(ml)} ± {_f(sl)}",
                          " / ".join(f"{_f(x['first'], '.3g')} -> {_f(x['third'], '.3g')} -> {_f(x['last'], '.3g')}"
                                     for x in falls),
                          f"{sum(x['falls'] for x in falls)}/{len(falls)}",
                          " / ".join(_f(x["share"], ".2f") for x in falls),
                          _f(statistics.fmean(by[a][k]["wall_s"] for k in seeds), ".0f")))
        lines += ["", f"**{s}**", "", markdown_table(
            ["arm", "seeds", "mAP50-95 best, mean ± sd", "per seed", "last epoch, mean ± sd",
             "train cls loss: epoch 1 -> E/3 -> last (per seed)", "falls by E/3", "share of the fall by E/3",
             "wall s (mean)"], table)]
        pairs = []
        for i, a in enumerate(arms):
            for b in arms[i + 1:]:
                common = sorted(set(by[a]) & set(by[b]))
                x = [by[a][k]["mAP50-95_best"] for k in common]
                y = [by[b][k]["mAP50-95_best"] for k in common]
                t = paired_t(x, y)
                ratio = statistics.fmean(x) / statistics.fmean(y) if common and statistics.fmean(y) else math.nan
                beyond = t["p"] == t["p"] and t["p"] < 0.05
                pairs.append((f"{a} - {b}", t["n"], f"{_f(t['mean'])} ± {_f(t['sd'])}", _f(ratio, ".2f"),
                              _f(t["t"], ".2f"), _f(t["p"], ".3f" if not t["p"] < 0.001 else ".1e"),
                              "yes" if beyond else "no" if t["p"] == t["p"] else "-"))
        if pairs:
            lines += ["", markdown_table(["paired difference (best mAP50-95)", "n", "mean ± sd", "ratio of means",
                                          "t (n-1 df)", "p (two-sided)", "beyond the spread (p < 0.05)"], pairs)]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Train cls loss per epoch as a fraction of epoch 1's, one panel per set: thin lines per seed, thick the mean;
    the dotted line marks the end of the first third."""
    # a curve is drawn relative to its first epoch: one starting at 0 (no class loss: a one-class set) has no shape
    ok = [r for r in rows if r.get("rc") == 0 and r.get("cls_curve") and r["cls_curve"][0] > 0]
    sets = list(dict.fromkeys(r["set"] for r in ok))
    colours = {a: f"C{i}" for i, a in enumerate(dict.fromkeys(r["arm"] for r in rows))}  # one colour per arm everywhere
    fig, axes = plt.subplots(1, max(len(sets), 1), figsize=(6 * max(len(sets), 1), 4.2), squeeze=False)
    for ax, s in zip(axes[0], sets):
        arms = list(dict.fromkeys(r["arm"] for r in ok if r["set"] == s))
        for a in arms:
            colour = colours[a]
            curves = [[v / r["cls_curve"][0] for v in r["cls_curve"]] for r in ok if r["set"] == s and r["arm"] == a]
            for c in curves:
                ax.plot(range(1, len(c) + 1), c, color=colour, alpha=0.3, lw=0.8)
            n = min(len(c) for c in curves)
            mean = [statistics.fmean(c[e] for c in curves) for e in range(n)]
            first = [r["cls_curve"][0] for r in ok if r["set"] == s and r["arm"] == a]
            ax.plot(range(1, n + 1), mean, color=colour, lw=2,
                    label=f"{a} (n={len(curves)}, epoch 1: {statistics.fmean(first):.3g})")
            ax.axvline(math.ceil(n / 3), color="grey", ls=":", lw=1)
        ax.set(title=f"{s}: train cls loss / its epoch-1 value", xlabel="epoch", ylabel="cls loss / epoch 1")
        drawn = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
        if drawn and max(drawn) / min(drawn) > 5:  # an arm whose loss rises would flatten the others
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save(out: Path, rows: list[dict], meta: dict) -> None:
    (out / "seeded.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


BUILTIN = "builtin"  # the built-in synthetic set (studies/data/shapes.yaml) beside the held-out ones


def builtin_yaml() -> Path:
    """The built-in set as a plain data.yaml beside its generated images (every engine reads it; ours generates
    the images on first use), so the default model can be compared on it like on a held-out set."""
    cfg = load_data_config(DEFAULT_DATA)
    root = Path(cfg["path"])
    out = root / "data.yaml"
    text = "".join([f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n",
                    *(f"  {i}: {n}\n" for i, n in enumerate(cfg["names"]))])
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return out


def data_yamls(root: Path, sets: list[str]) -> dict[str, Path]:
    held = [s for s in sets if s != BUILTIN]
    yamls = generate_heldout(root, held) if held else {}
    return {**yamls, **({BUILTIN: builtin_yaml()} if BUILTIN in sets else {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.seeded_peers", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sets", default="glyphs", help=f"held-out sets, of: {', '.join(SETS)}; or {BUILTIN} (the built-in set)")
    p.add_argument("--arms", default=DEFAULT_ARMS,
                   help="comma-separated ENGINE:MODEL[:HYP] (engines: ours, ultralytics, yolov5; HYP: ours only)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (one set's arms of one seed)")
    p.add_argument("--data-root", default="datasets/heldout-v1")
    p.add_argument("--peer-python", default=str(REPO / ".venv-peer" / "bin" / "python"))
    p.add_argument("--name", default="seeded_peers", help="results file bench/results/<name>.md")
    p.add_argument("--out", default=None, help="run folder (default runs/seeded/<date-time>); an earlier one resumes")
    p.add_argument("--report-only", default=None, help="print the tables of a run folder and exit")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="one recipe for every arm (ours and yolov5 engines, no hyp of their own): YOLOv5's "
                        "scratch-low with this optimizer; mAP counted YOLOv5's way")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--no-train", action="store_true", help="train nothing: report and record the runs already in "
                   "--out (a run cut for time); the planned runs missing are named")
    args = p.parse_args(argv)
    if args.report_only:
        saved = json.loads((Path(args.report_only) / "seeded.json").read_text())
        print(report(saved["rows"], saved["meta"]))
        return 0
    try:
        arms = [parse_arm(a) for a in args.arms.split(",")]
    except ValueError as e:
        p.error(str(e))
    if args.recipe and any(a[1] == "ultralytics" or a[3] for a in arms):
        p.error(f"--recipe {args.recipe} gives every arm YOLOv5's recipe: ours and yolov5 arms only, without a hyp "
                f"of their own (got {args.arms})")
    sets, seeds = args.sets.split(","), [int(v) for v in args.seeds.split(",")]
    if any(a[1] != "ours" for a in arms) and not args.no_train and not Path(args.peer_python).exists():
        p.error(f"--peer-python {args.peer_python} does not exist: `make .venv-peer/.installed` installs it")
    out = Path(args.out or f"runs/seeded/{datetime.datetime.now():%Y%m%d-%H%M%S}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    png = (bench.record.RESULTS / f"{args.name}_{out.name}_cls_loss.png") if not args.no_record else out / "cls_loss.png"
    meta = {**machine(), "epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch, "workers": args.workers,
            "seeds": args.seeds, "arms": args.arms, "recipe": args.recipe, "png": png.name if not args.no_record else str(png)}
    saved = json.loads((out / "seeded.json").read_text()) if (out / "seeded.json").exists() else {"meta": {}, "rows": []}
    for key in ("epochs", "imgsz", "batch", "workers", "recipe"):  # a resumed folder's runs must share the command
        if key in saved["meta"] and saved["meta"][key] != meta[key]:
            p.error(f"--out {out} was run with {key} {saved['meta'][key]}, not {meta[key]}")
    rows = [r for r in saved["rows"] if r.get("rc") == 0]
    have = {(r["set"], r["arm"], r["seed"]) for r in rows}
    todo = [(s, seed, *arm) for seed in seeds for s in sets for arm in arms if (s, arm[0], seed) not in have]
    if args.no_train:
        meta["not_run"] = [f"{job[0]} {job[2]} seed {job[1]}" for job in todo]
        todo = []
    else:
        warm_up(["ours", *(TRAINER[a[1]] if a[1] != "ultralytics" else "yolov5n" for a in arms if a[1] != "ours")],
                args.peer_python)
    yamls = data_yamls(REPO / args.data_root, sets) if todo else {}

    def one(s: str, seed: int, label: str, engine: str, model: str, hyp: str) -> dict:
        spec = RunSpec(s, TRAINER[engine], args.epochs, yamls[s].resolve(), args.imgsz,
                       args.batch, args.workers, out / s / f"{label.replace(' ', '-')}-s{seed}", model=model, seed=seed,
                       ours_args=("--hyp", hyp) if hyp else recipe_args(args.recipe, "ours"),
                       peer_args=recipe_args(args.recipe, engine))
        row = {"arm": label, "seed": seed, **measure(spec, args.peer_python)}
        if args.recipe and engine == "ours" and row["rc"] == 0:
            row["own_counting"] = {k: row[k] for k in ("mAP50-95_best", "mAP50-95_last")}
            row.update(yolov5_counting(spec.out, yamls[s], args.imgsz))
        row["cls_curve"] = cls_curve(spec.out, engine) if row["rc"] == 0 else []
        print(f"{s} {label} seed {seed}: {row['wall_s']:.0f} s, mAP50-95 best "
              f"{row.get('mAP50-95_best', math.nan):.4f} last {row.get('mAP50-95_last', math.nan):.4f}", flush=True)
        return row

    print(f"{len(todo)} trainings to run ({len(have)} kept from {out}), {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        for row in pool.map(lambda job: one(*job), todo):
            rows.append(row)
            _save(out, rows, meta)
    text = report(rows, meta)
    print(text)
    plot(rows, png)
    print(f"\nrows: {out}/seeded.json; cls loss curves: {png}")
    if not args.no_record:
        record(args.name, text, meta, command_line("bench.seeded_peers", argv))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
