"""Evolution benchmark: `python -m bench.evolve_speed [--trials 8] [--epochs 1] [--search-trials 16]`.

Measures on the quick study (CPU), every bench study finetuning one cached base run (runs/evolve/bench-base):
- trials/hour with 1 worker and with 2 workers, one torch thread each, and the scaling ratio;
- per-trial overhead outside training steps: trial wall time minus the train + val time of its
  epochs (fit's history 'seconds'), as a fraction of the trial's wall time;
- best fitness after --search-trials trials for the GA and for TPE (2 workers each).
Prints a markdown table, writes JSON (default runs/evolve/bench.json) and appends the table to
bench/results/evolve_speed.md (`--no-record`: not). Bench studies live in runs/evolve/bench-*/ and are
recreated on every run.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bench.quiet import quiet_evolution
from bench.record import command_line, machine, markdown_table, record
from core.hyp import load_hyp
from evolve.base_run import ensure_base_run
from evolve.launcher import launch
from evolve.storage import make_storage, run_dir_for
from evolve.study_config import StudyConfig, load_study
from evolve.worker import load_callable


def _run(cfg: StudyConfig, fit_spec: str | None, threads: int | None) -> tuple[optuna.Study, float]:
    run_dir = run_dir_for(cfg.name)
    shutil.rmtree(run_dir, ignore_errors=True)  # a bench study always starts empty
    t0 = time.time()
    with quiet_evolution():
        code = launch(cfg, fit_spec=fit_spec, threads=threads, poll=0.5, plot_every=1e9)
    wall = time.time() - t0
    if code != 0:
        raise SystemExit(f"bench study {cfg.name} failed (exit {code}); see {run_dir}/worker_*.log")
    return optuna.load_study(study_name=cfg.name, storage=make_storage(None, run_dir)), wall


def _trial_stats(study: optuna.Study) -> dict[str, float]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    starts = [t.datetime_start.timestamp() for t in done]
    ends = [t.datetime_complete.timestamp() for t in done]
    span = max(ends) - min(starts)  # first trial start to last trial end: excludes process start-up
    secs = [t.user_attrs["seconds"] for t in done]
    over = [t.user_attrs["overhead_seconds"] for t in done]
    return {"trials": len(done), "span_s": round(span, 2), "trials_per_hour": round(3600 * len(done) / span, 2),
            "mean_trial_s": round(sum(secs) / len(secs), 3), "mean_overhead_s": round(sum(over) / len(over), 3),
            "overhead_fraction": round(sum(over) / sum(secs), 4)}


def shared_start(study_file: str, overrides: dict[str, Any], fit_spec: str | None = None) -> dict[str, Any]:
    """Overrides that make bench studies finetune one cached base run (runs/evolve/bench-base) instead of
    each training its own; {} when the study trains its trials from scratch."""
    cfg = load_study(study_file, {**overrides, "name": "bench-base"})
    if not cfg.base:
        return {}
    weights = ensure_base_run(cfg, load_hyp(cfg.resolved("hyp")), run_dir_for("bench-base"), "cpu",
                              fit=load_callable(fit_spec) if fit_spec else None)
    return {"weights": str(Path(weights).resolve()), "base": {}}


def bench(study_file: str, trials: int, epochs: int | None, search_trials: int, imgsz: int | None,
          fit_spec: str | None = None) -> dict[str, Any]:
    base = {"epochs": epochs, "imgsz": imgsz, "gpus": "cpu", "noise_seeds": 0}
    base.update(shared_start(study_file, base, fit_spec))
    out: dict[str, Any] = {"study": study_file, "trials": trials, "search_trials": search_trials}
    for workers in (1, 2):
        cfg = load_study(study_file, {**base, "name": f"bench-w{workers}", "trials": trials, "workers": workers})
        study, wall = _run(cfg, fit_spec, threads=1)
        stats = _trial_stats(study)
        stats["wall_s_with_startup"] = round(wall, 2)
        out[f"workers_{workers}"] = stats
        out["epochs"], out["imgsz"] = cfg.epochs, cfg.imgsz
    out["scaling_2_vs_1"] = round(out["workers_2"]["trials_per_hour"] / out["workers_1"]["trials_per_hour"], 3)
    out["overhead_fraction"] = max(out["workers_1"]["overhead_fraction"], out["workers_2"]["overhead_fraction"])
    for sampler in ("ga", "tpe") if search_trials else ():  # --search-trials 0: throughput only
        cfg = load_study(study_file, {**base, "name": f"bench-{sampler}", "trials": search_trials, "workers": 2,
                                      "sampler": sampler})
        study, wall = _run(cfg, fit_spec, threads=None)
        values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        out[f"best_fitness_{sampler}"] = round(max(values), 5) if values else math.nan
        out[f"wall_s_{sampler}"] = round(wall, 1)
    return out


def table(res: dict[str, Any]) -> str:
    """The figures as markdown: a line naming the setting, then one row per figure."""
    w1, w2 = res["workers_1"], res["workers_2"]
    rows = [("trials/hour, 1 worker", f"{w1['trials_per_hour']:.1f}"),
            ("trials/hour, 2 workers", f"{w2['trials_per_hour']:.1f}"),
            ("scaling 2 vs 1 (target >= 1.8)", f"{res['scaling_2_vs_1']:.2f}x"),
            ("per-trial time outside training steps and validation, 1 / 2 workers (target < 5%)",
             f"{100 * w1['overhead_fraction']:.1f}% / {100 * w2['overhead_fraction']:.1f}% "
             f"(mean {w1['mean_overhead_s']:.2f} s of {w1['mean_trial_s']:.1f} s with 1 worker)")]
    if res["search_trials"]:
        rows.append((f"best fitness after {res['search_trials']} trials, ga / tpe (2 workers)",
                     f"{res['best_fitness_ga']:.4f} / {res['best_fitness_tpe']:.4f}"))
    return (f"evolve bench ({res['study']}, {res['epochs']} epoch(s)/trial, imgsz {res['imgsz']}, CPU, "
            f"1 thread/worker, {res['trials']} trials per throughput run)\n\n" + markdown_table(["figure", "value"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/quick.yaml")
    ap.add_argument("--trials", type=int, default=8, help="trials per throughput run (1 and 2 workers; 4 per worker averages out slow hyps)")
    ap.add_argument("--search-trials", type=int, default=16, help="trials per sampler for ga vs tpe")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the study's)")
    ap.add_argument("--imgsz", type=int, default=None)
    ap.add_argument("--json", default="runs/evolve/bench.json")
    ap.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/evolve_speed.md")
    ap.add_argument("--fit", default=None, help=argparse.SUPPRESS)  # a fake fit, to smoke-test the bench
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meta = machine()
    res = bench(args.study, args.trials, args.epochs, args.search_trials, args.imgsz, args.fit)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    text = table(res)
    print(text)
    print(f"\nwritten {args.json}")
    if not args.no_record:
        record("evolve_speed", text, meta, command_line("bench.evolve_speed", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
