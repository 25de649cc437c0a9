"""Search-quality benchmark: `python -m bench.search [--trials 16] [--seeds 3] [--samplers ga,tpe,random]`.

Does evolution find hyps that are better than the base hyp by more than seed noise, and which sampler
finds them? On the quick study (built-in data, CPU):
1. one base run (cached, shared by every sampler's study): all trials finetune the same checkpoint;
2. one study per sampler with the same trial budget (`--trials`), 2 workers each;
3. each sampler's best searched trial, and the base hyp, retrained with the same `--seeds` fresh seeds for
   the study's `retrain: epochs` (paired by seed);
4. a table: best fitness found, the winner's retrain mean and sd, its paired gain over the base hyp, and
   whether it meets the target: gain >= 0.02 and (winner mean - winner sd) > base mean.
Prints the table, writes JSON (default runs/bench/search.json) and appends the table to
bench/results/search.md (`--no-record`: not), its gains to the README's headline. Bench studies live in
runs/evolve/search-*/ and runs/bench/search/ and are recreated on every run (the base run is reused).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from bench.evolve_speed import shared_start
from bench.quiet import quiet_evolution
from bench.record import command_line, machine, markdown_table, record
from evolve.launcher import launch
from evolve.noise import paired_gain, summarize
from evolve.report import write_outputs
from evolve.results import best_searched
from evolve.storage import make_storage, run_dir_for
from evolve.study import RetrainOptions, retrain_plan, run_retrain
from evolve.study_config import load_study

TARGET_GAIN = 0.02


def run_sampler(study_file: str, overrides: dict[str, Any], sampler: str, trials: int) -> tuple[Path, float]:
    """One study with `sampler`; returns its evolve.csv and wall seconds."""
    cfg = load_study(study_file, {**overrides, "name": f"search-{sampler}", "sampler": sampler, "trials": trials})
    run_dir = run_dir_for(cfg.name)
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    with quiet_evolution():
        code = launch(cfg, poll=1.0, plot_every=1e9)
    if code != 0:
        raise SystemExit(f"search bench: study {cfg.name} failed (exit {code}); see {run_dir}/worker_*.log")
    study = optuna.load_study(study_name=cfg.name, storage=make_storage(None, run_dir))
    write_outputs(study, run_dir, plots=True)
    return run_dir / "evolve.csv", time.time() - t0


def bench(study_file: str, trials: int, seeds: int, samplers: list[str], retrain_epochs: int | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {"gpus": "cpu", "noise_seeds": 0}
    t0 = time.time()
    overrides.update(shared_start(study_file, overrides))
    out: dict[str, Any] = {"study": study_file, "trials": trials, "seeds": seeds, "base_run_s": round(time.time() - t0, 1),
                           "samplers": {}}
    cfg = load_study(study_file, {**overrides, "name": "search"})
    ropts = RetrainOptions(epochs=retrain_epochs or int(cfg.retrain.get("epochs", cfg.epochs)), top_k=1, seeds=seeds,
                           base=False)
    plan: list[dict[str, Any]] = []
    for sampler in samplers:
        csv, wall = run_sampler(study_file, overrides, sampler, trials)
        runs = retrain_plan(csv, cfg, ropts)
        df = pd.read_csv(csv)
        out["samplers"][sampler] = {"evolve_s": round(wall, 1), "best_trial": runs[0]["trial"],
                                    "best_fitness": float(best_searched(df).fitness),  # trial 0 is the base hyp
                                    "base_trial_fitness": float(df[df.number == 0].fitness.iloc[0])}
        for r in runs:
            plan.append({**r, "role": sampler, "name": f"{sampler}_trial{r['trial']}_seed{r['seed']}"})
        if sampler == samplers[0]:  # the base hyp, with the same seeds: trial 0 of any of the studies
            base_runs = retrain_plan(csv, cfg, RetrainOptions(epochs=ropts.epochs, top_k=0, seeds=seeds, base=True))
            plan += [{**r, "name": f"base_seed{r['seed']}"} for r in base_runs if r["role"] == "base"]
    out_dir = Path("runs/bench/search")
    shutil.rmtree(out_dir, ignore_errors=True)
    t0 = time.time()
    retrain = pd.read_csv(run_retrain(cfg, plan, ropts, out_dir, "cpu", force=True, weights=overrides.get("weights")))
    out["retrain_s"] = round(time.time() - t0, 1)
    out.update(score_retrain(retrain, samplers, cfg.objective))
    for sampler in samplers:
        out["samplers"][sampler].update(out.pop(sampler))
    return out


def score_retrain(retrain: pd.DataFrame, samplers: list[str], objective: str) -> dict[str, Any]:
    """The base hyp's and each sampler's winner's retrain statistics, paired by seed, scored by the study's
    objective column as `evolve.study.choose_candidate` scores them (plain best-epoch fitness only when a
    retrain table has no objective column)."""
    value = "objective" if "objective" in retrain else "fitness"
    base = retrain[retrain.role == "base"]
    out: dict[str, Any] = {"retrain_value": f"objective ({objective})" if value == "objective" else value,
                           "base": {**summarize(base[value].tolist()), "fitness": base[value].tolist()}}
    for sampler in samplers:
        win = retrain[retrain.role == sampler]
        paired = paired_gain(dict(zip(win.seed, win[value])), dict(zip(base.seed, base[value])))
        stats = summarize(win[value].tolist())
        out[sampler] = {"retrain": {**stats, "fitness": win[value].tolist()}, "paired": paired,
                        "target_met": bool(paired["diff_mean"] >= TARGET_GAIN and stats["mean"] - stats["sd"] > out["base"]["mean"])}
    return out


HEADLINE = "Search gain over the base hyp at equal budget: each sampler's winner retrained, paired by seed (± se)"


def table(res: dict[str, Any]) -> str:
    """The result as markdown: a line naming the setting, the base hyp's and each sampler's row, the target."""
    b = res["base"]
    rows = [("base hyp", "-", f"{b['mean']:.4f} ± {b['sd']:.4f}", "-", "-", "-")]
    for name, s in res["samplers"].items():
        r, p = s["retrain"], s["paired"]
        rows.append((name, f"{s['best_fitness']:.4f} (trial {s['best_trial']})", f"{r['mean']:.4f} ± {r['sd']:.4f}",
                     f"{p['diff_mean']:+.4f} ± {p['diff_se']:.4f}", "met" if s["target_met"] else "not met",
                     f"{s['evolve_s'] / 60:.1f}"))
    return "\n".join([
        f"search bench ({res['study']}, {res['trials']} trials per sampler, {res['seeds']} retrain seeds, "
        f"retrains scored by {res['retrain_value']}; {res['wall_s'] / 60:.1f} min)", "",
        markdown_table(["sampler", "best searched trial", "winner retrained (mean ± sd)",
                        "paired gain over the base hyp (± se)", "target", "evolve min"], rows), "",
        f"target: gain >= {TARGET_GAIN} and winner mean - sd > base mean"])


def headline(res: dict[str, Any]) -> dict[str, str]:
    """The README's headline figure: every sampler's paired gain, beside the base hyp's own seed spread."""
    gains = ", ".join(f"{name} {s['paired']['diff_mean']:+.4f} ± {s['paired']['diff_se']:.4f}"
                      for name, s in res["samplers"].items())
    met = any(s["target_met"] for s in res["samplers"].values())
    return {HEADLINE: f"{gains} (target +{TARGET_GAIN}: {'met' if met else 'not met'}); "
                      f"base hyp {res['base']['mean']:.4f} ± {res['base']['sd']:.4f}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/quick.yaml")
    ap.add_argument("--trials", type=int, default=16, help="trials per sampler (equal budget)")
    ap.add_argument("--seeds", type=int, default=3, help="fresh seeds per retrained hyp")
    ap.add_argument("--samplers", default="ga,tpe,random")
    ap.add_argument("--retrain-epochs", type=int, default=None, help="default: the study's retrain epochs")
    ap.add_argument("--json", default="runs/bench/search.json")
    ap.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/search.md")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meta = machine()
    t0 = time.time()
    res = bench(args.study, args.trials, args.seeds, args.samplers.split(","), args.retrain_epochs)
    res["wall_s"] = round(time.time() - t0, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    text = table(res)
    print(text)
    print(f"\nwritten {args.json}")
    if not args.no_record:
        record("search", text, meta, command_line("bench.search", argv), headline=headline(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
