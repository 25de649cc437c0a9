"""Planted-gain benchmark: `python -m bench.planted [--tasks lr,mirror,large] [--samplers ga,tpe,random] [--trials 12]
[--seeds 3]`.

Does the search find a better hyp when one is known to exist, and how fast? Each task (bench/planted_tasks.py)
is a dataset and a base hyp that is wrong in a known gene, with the fix. With the quick study's settings
(studies/quick.yaml: every trial finetunes one base run for `epochs`, objective mean_last_3, AdamW) on small 96 px sets:
1. the planted gain, before any search: the base hyp and the fixed hyp trained with the same `--seeds` seeds
   (1, 2, ...) at the trial budget and at the retrain budget (one measurement when they are equal, as in the
   quick study), paired by seed: gain mean, sd and a one-sided paired t test (df = n - 1);
2. one study per sampler at the same trial budget (`--trials`, trial 0 = the base hyp, no noise seeds), its
   winner retrained with the same seeds; the recovered share = (winner - base hyp, paired by seed) / planted
   gain, ± its sd over seeds, with the t test of the winner over the base hyp; and the first trial (by
   completion time) whose fitness exceeds the base trial's by 80% of the planted gain at the trial budget;
   and whether the trial ranking transfers: `--transfer` more trials spread over the ranking retrained with one
   seed (the quick study's `retrain: transfer`), Spearman's rho between trial fitness and retrained fitness over
   them and the winner, with its n (evolve.transfer).
Prints both tables, writes JSON (default runs/bench/planted.json) and appends them to bench/results/planted.md
(`--no-record`: not). Studies live in runs/evolve/planted-*/, retrains in runs/bench/planted/<task>/ (reused
when their inputs are unchanged), data in datasets/planted-v1/.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import optuna
import pandas as pd
import yaml
from tqdm import tqdm

from bench.planted_tasks import TASKS, Task, task_data, task_hyps, task_space
from bench.quiet import quiet_evolution
from bench.record import command_line, machine, machine_line, markdown_table, record
from evolve.base_run import ensure_base_run
from evolve.launcher import launch
from evolve.noise import paired_gain, summarize
from evolve.report import write_outputs
from evolve.storage import make_storage, run_dir_for
from evolve.study import RetrainOptions, retrain_plan, run_retrain
from evolve.study_config import StudyConfig, load_study
from evolve.transfer import TRANSFER_ROLE, transfer_summary

QUICK = "studies/quick.yaml"
OUT = Path("runs") / "bench" / "planted"
SHARE_TARGET = 0.8  # the target: the winner recovers >= 80% of the planted gain


def task_study(task: Task, data_yaml: Path, imgsz: int, base_epochs: int, trials: int,
               trial_epochs: int | None = None, pruner_warmup: int | None = None) -> StudyConfig:
    """The quick study on the task's data, hyp and space (written to runs/bench/planted/<task>/); `trial_epochs`:
    other than the quick study's (longer trials, for a pruner to have epochs to cut)."""
    folder = OUT / task.name
    folder.mkdir(parents=True, exist_ok=True)
    hyps = task_hyps(task)
    files = {}
    for key, content in (("hyp", hyps["base"]), ("base_run_hyp", hyps["base_run"]), ("space", task_space(task))):
        files[key] = folder / f"{key}.yaml"
        files[key].write_text(yaml.safe_dump(content, sort_keys=False))
    quick = load_study(QUICK)
    return load_study(QUICK, {
        "name": f"planted-{task.name}", "data": str(data_yaml.resolve()), "hyp": str(files["hyp"].resolve()),
        "space": str(files["space"].resolve()), "imgsz": imgsz, "trials": trials, "noise_seeds": 0, "gpus": "cpu",
        "epochs": trial_epochs or quick.epochs, "pruner_warmup": pruner_warmup,
        "base": {"epochs": base_epochs, "close_mosaic": base_epochs // 4 if task.close_mosaic else 0,
                 "hyp": str(files["base_run_hyp"].resolve())},
        "train": {**quick.train, "automosaic": False}})  # the planted mosaic gene means what it says


def planted_plan(task: Task, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Retrain runs of the base hyp (trial 0) and the fixed hyp (trial -1), one per seed."""
    hyps = task_hyps(task)
    return [{"trial": trial, "role": role, "seed": s, "name": f"{role}_seed{s}", "hyp": hyps[role],
             "trial_fitness": math.nan, "mosaic": hyps[role]["mosaic"]}
            for trial, role in ((0, "base"), (-1, "fixed")) for s in seeds]


def by_seed(df: pd.DataFrame, role: str) -> dict[int, float]:
    """{seed: objective} of one role's retrain rows (the study's objective, as the trials are scored)."""
    rows = df[df.role == role]
    value = "objective" if "objective" in df else "fitness"
    return {int(s): float(v) for s, v in zip(rows.seed, rows[value])}


def recovered_share(winner: dict[int, float], base: dict[int, float], planted: float) -> dict[str, Any]:
    """The winner's paired gain over the base hyp as a share of the planted gain: mean and sd over seeds of
    (winner - base) / planted, with the paired t test of winner over base (evolve.noise.paired_gain)."""
    g = paired_gain(winner, base)
    share = g["diff_mean"] / planted if planted > 0 else math.nan
    sd = g["diff_sd"] / planted if planted > 0 else math.nan
    return {"share": share, "share_sd": sd, "gain": g["diff_mean"], "gain_sd": g["diff_sd"], "t": g["t"],
            "p": g["p"], "df": g["df"], "above_noise": g["above_noise"], "met": bool(share >= SHARE_TARGET and g["above_noise"])}


def first_reach(df: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """The first searched trial, in completion order, whose fitness exceeds trial 0's (the base hyp) by
    `threshold` (> 0): its number, its place in completion order (1 = the first trial to finish, trial 0
    included) and the seconds from the study's first trial start to its completion (None, None, None when no
    trial does, or the threshold is not positive)."""
    none = {"trial": None, "trials": None, "seconds": None}
    if not threshold > 0:
        return none
    done = df[(df.state == "COMPLETE") & df.fitness.notna()].copy()
    done["datetime_complete"] = pd.to_datetime(done.datetime_complete)
    done = done.sort_values(["datetime_complete", "number"]).reset_index(drop=True)
    base = done[done.number == 0]
    hit = done[(done.number != 0) & (done.fitness - float(base.fitness.iloc[0]) >= threshold)] if len(base) else base
    if hit.empty:
        return none
    start = pd.to_datetime(df.datetime_start).min()
    i = int(hit.index[0])
    return {"trial": int(hit.number.iloc[0]), "trials": i + 1,
            "seconds": round((hit.datetime_complete.iloc[0] - start).total_seconds(), 1)}


def ga_options(base: dict[str, Any], spec: str) -> dict[str, Any]:
    """The quick study's GA options changed by a sampler spec's tail: 'random' or 'base' sets `init`, KEY=VALUE
    sets one option ('explore=0/sigma=0.5': several, '/' between them)."""
    ga = dict(base)
    for item in filter(None, spec.split("/")):
        key, eq, value = item.partition("=")
        if not eq and key in ("random", "base"):
            ga["init"] = key
        elif eq:
            ga[key] = yaml.safe_load(value)
        else:
            raise SystemExit(f"--samplers: GA option {item!r} is neither 'random', 'base' nor KEY=VALUE")
    return ga


def run_search(cfg: StudyConfig, sampler_spec: str, weights: str, study_seed: int = 0) -> tuple[Path, float]:
    """One study with `sampler_spec` ('tpe'; 'tpe+hyperband' for a pruner; 'ga:random' for the GA's first
    generation drawn uniformly in the space instead of mutated from the base hyp; 'ga:explore=0' for a GA
    option other than the quick study's); `study_seed`: the search's seed (its samplers' and trials'), not the
    retrains' (seeds 1.. as in step 1, so they stay paired); returns its evolve.csv, wall s."""
    sampler, _, pruner = sampler_spec.partition("+")
    sampler, _, ga_spec = sampler.partition(":")
    ga = ga_options(cfg.ga, ga_spec)
    name = f"{cfg.name}-{slug(sampler_spec)}" + (f"-seed{study_seed}" if study_seed else "")
    scfg = load_study(QUICK, {**vars(cfg), "name": name, "sampler": sampler, "ga": ga, "pruner": pruner or "none",
                              "weights": weights, "base": {}, "seed": study_seed})
    run_dir = run_dir_for(scfg.name)
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    with quiet_evolution():
        code = launch(scfg, poll=1.0, plot_every=1e9)
    if code != 0:
        raise SystemExit(f"planted bench: study {scfg.name} failed (exit {code}); see {run_dir}/worker_*.log")
    study = optuna.load_study(study_name=scfg.name, storage=make_storage(None, run_dir))
    write_outputs(study, run_dir, plots=False)
    return run_dir / "evolve.csv", time.time() - t0


def slug(spec: str) -> str:
    """A sampler spec as a folder name: 'ga:explore=0/sigma=0.5' -> 'ga-explore0-sigma0.5'."""
    return spec.replace("+", "-").replace(":", "-").replace("/", "-").replace("=", "")


def retrain(cfg: StudyConfig, plan: list[dict], epochs: int, folder: Path, weights: str) -> pd.DataFrame:
    ropts = RetrainOptions(epochs=epochs, top_k=1, seeds=1, base=False)
    with quiet_evolution():
        return pd.read_csv(run_retrain(cfg, plan, ropts, folder, "cpu", force=False, weights=weights))


def planted_gain(cfg: StudyConfig, task: Task, seeds: list[int], budgets: list[int], weights: str) -> dict[str, Any]:
    """Step 1: base vs fixed hyp at each budget, paired by seed."""
    out = {}
    for epochs in budgets:
        t0 = time.time()
        df = retrain(cfg, planted_plan(task, seeds), epochs, OUT / task.name / f"planted_e{epochs}", weights)
        base, fixed = by_seed(df, "base"), by_seed(df, "fixed")
        out[str(epochs)] = {"base": base, "fixed": fixed, "base_stats": summarize(list(base.values())),
                            "fixed_stats": summarize(list(fixed.values())), "paired": paired_gain(fixed, base),
                            "seconds": round(time.time() - t0, 1)}
    return out


def prepare_task(task: Task, args: argparse.Namespace) -> tuple[StudyConfig, str, dict[str, Any]]:
    """Step 1 for one task: its data, its study, its base run, and the planted gain at each budget."""
    seeds = list(range(1, args.seeds + 1))  # retrain_plan's seeds: study seed + 1 ...
    data = task_data(task, n_train=args.train_images, n_val=args.val_images)
    cfg = task_study(task, data, args.imgsz, args.base_epochs, args.trials, args.trial_epochs, args.pruner_warmup)
    retrain_epochs = args.retrain_epochs or int(cfg.retrain.get("epochs", cfg.epochs))
    t0 = time.time()
    with quiet_evolution():
        weights = str(ensure_base_run(cfg, task_hyps(task)["base"], run_dir_for(f"{cfg.name}-base"), "cpu").resolve())
    res: dict[str, Any] = {"summary": task.summary, "base": task.base, "fix": task.fix, "data": str(data),
                           "trial_epochs": cfg.epochs, "retrain_epochs": retrain_epochs, "seeds": seeds,
                           "base_run_s": round(time.time() - t0, 1)}
    res["planted"] = planted_gain(cfg, task, seeds, sorted({cfg.epochs, retrain_epochs}), weights)
    return cfg, weights, res


def search_task(task: Task, cfg: StudyConfig, weights: str, res: dict[str, Any], samplers: list[str],
                bar: tqdm, transfer: int, study_seed: int = 0) -> None:
    """Step 2 for one task: a study per sampler, the winners retrained with step 1's seeds, scored against step
    1's base hyp runs (same seeds, same budget); `transfer` more trials per study retrained with one seed, for
    the rank correlation between trial and retrained fitness."""
    trial_gain = res["planted"][str(res["trial_epochs"])]["paired"]["diff_mean"]
    planted = res["planted"][str(res["retrain_epochs"])]
    res["samplers"] = {}
    plan = []
    for spec in samplers:
        bar.set_postfix_str(f"{task.name}: {spec}")
        csv, wall = run_search(cfg, spec, weights, study_seed)
        df = pd.read_csv(csv)
        runs = retrain_plan(csv, cfg, RetrainOptions(epochs=res["retrain_epochs"], top_k=1, seeds=len(res["seeds"]),
                                                     base=False, transfer=transfer))
        plan += [{**r, "role": spec if r["role"] != TRANSFER_ROLE else f"{spec} {TRANSFER_ROLE}",
                  "name": f"{slug(spec)}_trial{r['trial']}_seed{r['seed']}"} for r in runs]
        base_trial = df[df.number == 0].fitness
        res["samplers"][spec] = {"evolve_s": round(wall, 1), "trials": int(df.state.isin(["COMPLETE", "PRUNED"]).sum()),
                                 "pruned": int((df.state == "PRUNED").sum()),
                                 "winner": runs[0]["trial"], "winner_trial_fitness": runs[0]["trial_fitness"],
                                 "base_trial_fitness": float(base_trial.iloc[0]) if len(base_trial) else math.nan,
                                 "winner_hyp": {g: runs[0]["hyp"][g] for g in task.fix},
                                 "reach_80": first_reach(df, SHARE_TARGET * trial_gain)}
        bar.update(1)
    bar.set_postfix_str(f"{task.name}: retrain")
    t0 = time.time()
    df = retrain(cfg, plan, res["retrain_epochs"], OUT / task.name / f"winners_e{res['retrain_epochs']}", weights)
    res["retrain_s"] = round(time.time() - t0, 1)
    for spec, s in res["samplers"].items():
        s["retrain"] = by_seed(df, spec)
        s.update(recovered_share(s["retrain"], planted["base"], planted["paired"]["diff_mean"]))
        s["transfer"] = sampler_transfer(df, spec)
    bar.update(1)


def sampler_transfer(retrain_df: pd.DataFrame, spec: str) -> dict[str, Any]:
    """Spearman's rho between trial fitness and retrained fitness over one study's retrained trials (its winner,
    mean over seeds, and its transfer runs), with n (evolve.transfer.transfer_summary)."""
    rows = retrain_df[retrain_df.role.isin([spec, f"{spec} {TRANSFER_ROLE}"])].copy()
    rows["role"] = ["best" if r == spec else TRANSFER_ROLE for r in rows.role]
    t = transfer_summary(rows)
    return {"rho": t["rho"], "n": t["n"], "points": t["points"]}


def fmt_p(p: float) -> str:
    return "nan" if not math.isfinite(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def planted_table(tasks: dict[str, Any]) -> str:
    """Step 1 as markdown: per task and budget, base and fixed hyp (mean ± sd over seeds) and the paired gain."""
    rows = []
    for name, r in tasks.items():
        for epochs, p in r["planted"].items():
            g = p["paired"]
            budget = "trial = retrain" if r["trial_epochs"] == r["retrain_epochs"] else (
                "trial" if int(epochs) == r["trial_epochs"] else "retrain")
            fix = ", ".join(f"{k} {r['base'][k]:g} -> {v:g}" for k, v in r["fix"].items())
            rows.append((name, fix, f"{epochs} ({budget})", len(p["base"]),
                         f"{p['base_stats']['mean']:.4f} ± {p['base_stats']['sd']:.4f}",
                         f"{p['fixed_stats']['mean']:.4f} ± {p['fixed_stats']['sd']:.4f}",
                         f"**{g['diff_mean']:+.4f}** ± {g['diff_sd']:.4f}", f"{g['t']:.1f} / {fmt_p(g['p'])}"))
    return markdown_table(["task", "planted fix", "epochs (budget)", "seeds", "base hyp", "fixed hyp",
                           "planted gain (± sd)", "paired t / p (one-sided)"], rows)


def search_table(tasks: dict[str, Any]) -> str:
    """Step 2 as markdown: per task and sampler, the recovered share of the planted gain and the time to 80%."""
    rows = []
    for name, r in tasks.items():
        for spec, s in r.get("samplers", {}).items():
            reach = s["reach_80"]
            hyp = ", ".join(f"{k} {v:.3g}" for k, v in s["winner_hyp"].items())
            rows.append((name, spec, f"{s['trials']}" + (f" ({s['pruned']} pruned)" if s.get("pruned") else ""), f"{s['evolve_s']:.0f}", f"{s['winner']} ({hyp})",
                         f"**{s['share']:.0%}** ± {s['share_sd']:.0%}", f"{s['t']:.1f} / {fmt_p(s['p'])}",
                         "-" if reach["trials"] is None else f"{reach['trials']} ({reach['seconds']:.0f} s)",
                         fmt_transfer(s.get("transfer")), "met" if s["met"] else "not met"))
    return markdown_table(["task", "sampler", "trials", "wall s", "winner (planted genes)",
                           "recovered share ± sd", "t / p vs base", "trials to 80% (s)", "transfer rho (n)",
                           "target"], rows)


def fmt_transfer(t: dict[str, Any] | None) -> str:
    if not t or not t["n"]:
        return "-"
    return f"{t['rho']:+.2f} ({t['n']})" if math.isfinite(t["rho"]) else f"nan ({t['n']})"


def headline_rows(res: dict[str, Any]) -> dict[str, str]:
    """The README's row for the run's first sampler (the one a run is about: `--samplers ga,tpe` puts ga first):
    its recovered share per task with p, whether the target holds on every task, and a study's wall time."""
    tasks = {n: r for n, r in res["tasks"].items() if r.get("samplers")}
    if not tasks:
        return {}
    spec = next(iter(next(iter(tasks.values()))["samplers"]))
    got = {n: r["samplers"][spec] for n, r in tasks.items() if spec in r["samplers"]}
    shares = ", ".join(f"{n} {s['share']:.0%} ± {s['share_sd']:.0%} (p {fmt_p(s['p'])})" for n, s in got.items())
    met = sum(bool(s["met"]) for s in got.values())
    walls = [s["evolve_s"] for s in got.values()]
    first = next(iter(tasks.values()))
    label = (f"Planted gain recovered by the search, winner retrained with {len(first['seeds'])} seeds "
             f"({res['trials']} trials of {first['trial_epochs']} epochs): {spec}")
    return {label: f"{shares}; target >= {SHARE_TARGET:.0%} above noise met on {met} of {len(got)}; a study "
                   f"{min(walls):.0f}-{max(walls):.0f} s"}


def report(res: dict[str, Any]) -> str:
    first = next(iter(res["tasks"].values()))
    return "\n".join([
        f"planted-gain bench ({', '.join(res['tasks'])}; the quick study's settings at {res['imgsz']} px: "
        f"{res['train_images']} train / {res['val_images']} val images, base run {res['base_epochs']} epochs, "
        f"trials finetune it {first['trial_epochs']} epochs, retrains {first['retrain_epochs']} epochs, "
        f"seeds {', '.join(map(str, first['seeds']))}, search seed {res.get('study_seed', 0)}, scored by mean_last_3; "
        f"{res['wall_s'] / 60:.1f} min on "
        f"{res['machine']})", "",
        "Step 1, the planted gain (fixed hyp - base hyp, paired by seed), measured before any search:", "",
        planted_table(res["tasks"]), "",
        f"Step 2, each sampler's winner retrained with the same seeds: recovered share = paired gain over the base "
        f"hyp / planted gain (target >= {SHARE_TARGET:.0%} and p < 0.05); trials to 80% = the first trial, in "
        f"completion order, {SHARE_TARGET:.0%} of the planted gain above trial 0 (the base hyp); transfer rho = "
        f"Spearman's rho between trial fitness and retrained fitness over the winner (mean of its seeds) and "
        f"{res.get('transfer', 0)} more trials spread over the ranking (one seed each), n = the retrained trials:", "",
        search_table(res["tasks"]) if any("samplers" in r for r in res["tasks"].values()) else "(not run: --planted-only)"])


def parse_list(text: str, known: Sequence[str] | None, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if known is not None and s not in known]
    if not items or bad:
        raise SystemExit(f"--{what}: unknown {bad or text!r} (known: {', '.join(known or [])})")
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--samplers", default="ga,tpe,random", help="comma list; 'tpe+hyperband': with that pruner; 'ga:random': the GA's first "
                    "generation drawn uniformly in the space")
    ap.add_argument("--trials", type=int, default=12, help="trials per study (the quick study's 12), trial 0 = base hyp")
    ap.add_argument("--study-seed", type=int, default=0, help="the searches' seed (samplers, trials; default the "
                    "quick study's 0); the retrains keep seeds 1..--seeds")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per side of every paired comparison (>= 2)")
    ap.add_argument("--trial-epochs", type=int, default=None, help="default: the quick study's epochs; longer "
                    "trials give a pruner (--samplers tpe+hyperband) epochs to cut")
    ap.add_argument("--pruner-warmup", type=int, default=None, help="epochs before a pruner may stop a trial "
                    "(default: half the trial; Hyperband's first rung)")
    ap.add_argument("--retrain-epochs", type=int, default=None, help="default: the quick study's retrain epochs")
    ap.add_argument("--base-epochs", type=int, default=80, help="each task's base run (trials finetune it)")
    ap.add_argument("--imgsz", type=int, default=96, help="train size (the data is generated at 96 px)")
    ap.add_argument("--train-images", type=int, default=128)
    ap.add_argument("--val-images", type=int, default=48)
    ap.add_argument("--transfer", type=int, default=None, help="trials per study retrained (one seed) for the "
                    "trial/retrain rank correlation; default: the quick study's retrain: transfer")
    ap.add_argument("--planted-only", action="store_true", help="step 1 only: the planted gains, no search")
    ap.add_argument("--json", default="runs/bench/planted.json")
    ap.add_argument("--no-record", action="store_true", help="do not append the tables to bench/results/planted.md")
    args = ap.parse_args(argv)
    tasks = parse_list(args.tasks, list(TASKS), "tasks")
    transfer = int(load_study(QUICK).retrain.get("transfer", 0)) if args.transfer is None else args.transfer
    if transfer < 0:
        raise SystemExit(f"--transfer {transfer}: must be >= 0")
    args.samplers = parse_list(args.samplers, None, "samplers")
    if args.seeds < 2:
        raise SystemExit(f"--seeds {args.seeds}: a paired t test needs >= 2 seeds")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meta = machine()
    t0 = time.time()
    res: dict[str, Any] = {"imgsz": args.imgsz, "train_images": args.train_images, "val_images": args.val_images,
                           "base_epochs": args.base_epochs, "trials": args.trials, "machine": machine_line(meta),
                           "transfer": transfer, "study_seed": args.study_seed,
                           "tasks": {}}
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    studies = {}
    steps = len(tasks) * (1 + (0 if args.planted_only else len(args.samplers) + 1))
    with tqdm(total=steps, desc="planted bench", unit="step") as bar:
        for name in tasks:  # step 1 for every task before any search
            bar.set_postfix_str(f"{name}: planted gain")
            cfg, weights, res["tasks"][name] = prepare_task(TASKS[name], args)
            studies[name] = (cfg, weights)
            json_path.write_text(json.dumps(res, indent=1, default=float))  # partial results survive a crash
            bar.update(1)
        tqdm.write("Step 1, the planted gain (fixed hyp - base hyp, paired by seed):\n" + planted_table(res["tasks"]))
        for name in [] if args.planted_only else tasks:
            search_task(TASKS[name], *studies[name], res["tasks"][name], args.samplers, bar, transfer, args.study_seed)
            json_path.write_text(json.dumps(res, indent=1, default=float))
    res["wall_s"] = round(time.time() - t0, 1)
    json_path.write_text(json.dumps(res, indent=1, default=float))
    text = report(res)
    print(text)
    if not args.no_record:
        path = record("planted", text, meta, command_line("bench.planted", argv), headline=headline_rows(res))
        print(f"\nrecorded in {path}")
    print(f"figures: {args.json}; studies: runs/evolve/planted-*/; retrains: {OUT}/<task>/; data: datasets/planted-v1/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
