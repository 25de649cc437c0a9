"""`python -m evolve.study --study studies/quick.yaml`: evolve, retrain the best at full budget, prune it, report.
`python -m evolve.study --data D.yaml`: the same on your own data, with the quick study's settings (no study file).

Phases (outputs in runs/study/NAME/, the evolution itself in runs/evolve/NAME/ as with `python -m evolve`):
  evolve   the base run if the study has one (trials finetune from it), then run or resume the Optuna study
           to its trial count (a finished study is not re-run)
  retrain  the top-k trials' hyps (optionally the base hyp too) for the `retrain: epochs` budget, each with
           `seeds` fresh seeds                                          -> retrain/<trialN_seedS>/, retrain.csv
           (a two-objective study with `budget: {latency_ms: X}`: the top-k among the trials within the budget,
           each at its own image size; the base hyp's runs over the budget are the reference, never chosen)
           and `transfer` more trials spread over the ranking, one seed each: does the trial ranking hold at
           full training? (evolve/transfer.py)
  prune    prune.pipeline on the retrained hyp with the highest mean over its seeds (its best run's best.pt,
           hyp = best_hyp.yaml); retrain/choice.json says whether it beats the base hyp beyond seed noise
  report   summary.json (machine-readable figures of every phase) and report.html
           report.html is one self-contained file, with the PNGs and CSVs beside it
Each phase records its inputs in phases/<phase>.json and is skipped when they and its outputs are unchanged;
a phase that runs makes every later one run. --force re-runs retrain and prune (evolution always resumes: use
--name for a fresh study). `--report-only RUN_DIR` redraws everything from the CSVs and the storage alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import cv2
import optuna
import pandas as pd
import torch
import yaml

from core.argtypes import existing_file
from core.atomic import atomic_write, remove_orphaned_temps
from core.cli import main_guard
from core.cpu import cpu_cores
from core.data.identity import data_identity
from core.digest import code_version, describe_change, sha256_file
from core.hyp import HYP_KEYS
from core.train import fit as train_fit
from evolve.detections import draw_detections
from evolve.devices import device_slots
from evolve.html_report import build_report
from evolve import budget
from evolve.launcher import launch
from evolve.noise import compare_to_base, summarize
from evolve.objective import objective_value
from evolve.objectives import SPEED_GENES, cost_budget
from evolve.pareto import choose_within, table_points
from evolve.prune_gene import GENE as PRUNE_GENE, pruned_start, round_to_for
from evolve.scale_gene import GENES as SCALE_GENES, scaled_model
from evolve.prune_hyp import prune_hyp
from evolve.report import write_outputs
from evolve.storage import describe, open_target
from evolve.study_config import REPO, StudyConfig, StudyError, load_study
from evolve.summary import SUMMARY_JSON, build_summary, write_json_atomic
from evolve.transfer import TRANSFER_ROLE, transfer_line, transfer_summary, transfer_trials
from evolve.train_setup import search_train_options, start_weights

# prune.* is imported where it is used: a pruning package that fails to import costs only the prune phase
# (run_study reports it and still evolves, retrains and writes the report).

__all__ = ["RetrainOptions", "retrain_plan", "run_retrain", "run_study", "write_study_report"]

LOGGER = logging.getLogger(__name__)

RUNS = Path("runs") / "study"
STUDY_JSON = "study.json"
NO_RECORD = "no finished record"  # phase_change's reason when a phase never finished here
CHOICE_JSON = "choice.json"  # retrain/choice.json: the hyp chosen by seed mean, every candidate's spread
# Prune options the study sets itself (from the retrain and the study's data/model); the rest come from `prune:`.
PRUNE_RESERVED = ("study", "data", "model", "weights", "hyp", "epochs", "project", "name", "force", "progress")


@dataclass
class RetrainOptions:
    epochs: int = 30        # the full training budget (trials train for the study's `epochs`)
    top_k: int = 1          # retrain the k best trials
    seeds: int = 1          # runs per retrained hyp, seeds study.seed+1 ... (fresh: not the trials' seed)
    base: bool = False      # also retrain trial 0 (the base hyp): default vs best at the full budget
    transfer: int = 0       # also retrain this many trials spread over the ranking, one seed each (evolve/transfer.py)


def retrain_options(cfg: StudyConfig) -> RetrainOptions:
    """The study's `retrain:` section, checked (unknown keys or values < 1 name the field)."""
    known = {f.name for f in fields(RetrainOptions)}
    unknown = sorted(set(cfg.retrain) - known)
    if unknown:
        raise StudyError(f"study '{cfg.name}': unknown retrain option(s) {unknown} (allowed: {', '.join(sorted(known))})")
    opts = RetrainOptions(**{k: (bool(v) if k == "base" else int(v)) for k, v in cfg.retrain.items()})
    for key in ("epochs", "top_k", "seeds"):
        if getattr(opts, key) < 1:
            raise StudyError(f"study '{cfg.name}': retrain.{key}={getattr(opts, key)} must be >= 1")
    if opts.transfer < 0:
        raise StudyError(f"study '{cfg.name}': retrain.transfer={opts.transfer} must be >= 0")
    return opts


def check_prune_section(cfg: StudyConfig) -> dict[str, Any]:
    """The study's `prune:` section: only prune.pipeline.PruneOptions fields the study does not set itself."""
    from prune.pipeline import PruneOptions  # optional: see the note above the imports
    allowed = sorted({f.name for f in fields(PruneOptions)} - set(PRUNE_RESERVED))
    unknown = sorted(set(cfg.prune) - set(allowed))
    if unknown:
        raise StudyError(f"study '{cfg.name}': prune option(s) {unknown} not allowed (allowed: {', '.join(allowed)}; "
                         f"{', '.join(PRUNE_RESERVED)} are set by the study)")
    return dict(cfg.prune)


# ---- phase records: inputs json + outputs that must exist --------------------------------------------------

def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def phase_path(run_dir: Path | str, phase: str) -> Path:
    return Path(run_dir) / "phases" / f"{phase}.json"


def phase_current(run_dir: Path | str, phase: str, inputs: dict) -> bool:
    """True when the phase last finished with these inputs and its recorded outputs all still exist."""
    return phase_change(run_dir, phase, inputs) is None


def phase_change(run_dir: Path | str, phase: str, inputs: dict) -> str | None:
    """Why the phase must run, in a few words ('no finished record', 'objective changed ...'); None: skip it."""
    path = phase_path(run_dir, phase)
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return NO_RECORD
    missing = [p for p in rec.get("outputs", []) if not Path(p).exists()]
    return describe_change(rec.get("inputs"), _plain(inputs)) or (f"{missing[0]} is missing" if missing else None)


def phase_done(run_dir: Path | str, phase: str, inputs: dict, outputs: list[Path | str], seconds: float) -> None:
    path = phase_path(run_dir, phase)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"inputs": _plain(inputs), "outputs": [str(p) for p in outputs], "seconds": round(seconds, 1),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write(path, json.dumps(rec, indent=1))


# ---- provenance ---------------------------------------------------------------------------------------------

def git_version() -> dict[str, Any]:
    """`git rev-parse HEAD` and whether tracked files differ from it (read-only git calls)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def write_provenance(run_dir: Path, cfg: StudyConfig, study_file: str | None, evolve_dir: Path, device: str,
                     threads: int) -> None:
    """study.json: the study record and where/what/when it ran (created kept from the first run)."""
    path = run_dir / STUDY_JSON
    old = json.loads(path.read_text()) if path.is_file() else {}
    data_file = cfg.resolved("data") or str(REPO / "studies" / "data" / "shapes.yaml") + " (built-in synthetic)"
    rec = {**old, "name": cfg.name, "study_file": study_file, "config": cfg.as_record(),
           "evolve_dir": str(evolve_dir), "storage": describe(cfg.storage, evolve_dir), "data": data_file,
           "model": cfg.resolved("model"), "model_sha256": sha256_file(cfg.resolved("model")),
           "device": device, "threads": threads, "git": git_version(), "host": platform.node(),
           "python": platform.python_version(), "torch": torch.__version__, "command": "python -m evolve.study " + " ".join(sys.argv[1:]),
           "created": old.get("created", time.strftime("%Y-%m-%d %H:%M:%S")),
           "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.write_text(json.dumps(_plain(rec), indent=1))


# ---- retrain -------------------------------------------------------------------------------------------------

def retrain_plan(evolve_csv: Path, cfg: StudyConfig, ropts: RetrainOptions) -> list[dict[str, Any]]:
    """One entry per retrain run: trial, role, seed, hyp. Candidates are the top-k searched trials (the base
    hyp's own trials are its noise seeds, not candidates); `base: true` adds the base hyp with the same
    seeds, for a paired comparison; `transfer: N` adds N more searched trials spread over the ranking, with
    the first of those seeds only (role 'transfer': they measure transfer, they are not candidates)."""
    df = pd.read_csv(evolve_csv)
    is_base = df["base"].fillna(False).astype(bool) if "base" in df else df.number == 0
    done = df[(df.state == "COMPLETE") & df.fitness.notna()]
    searched = done[~is_base.loc[done.index]].sort_values(["fitness", "number"], ascending=[False, True])
    if searched.empty and done.empty:
        raise StudyError(f"{evolve_csv}: no complete trial to retrain")
    limit = cost_budget(cfg.budget)
    over: set[int] = set()  # trials over the cost budget: never candidates
    if limit is not None:
        cost, value = limit
        over = {int(n) for n, c in zip(df.number, df[cost] if cost in df else [math.nan] * len(df))
                if not c <= value}
        fits = searched[~searched.number.isin(over)]
        if cost in fits:  # ties in fitness: the cheaper first, as the budget's choice (evolve/pareto.py)
            fits = fits.sort_values(["fitness", cost, "number"], ascending=[False, True, True])
        if fits.empty:
            choice = choose_within(table_points(done, cost), value, cost)
            raise StudyError(f"{evolve_csv}: no searched trial fits the budget ({choice.message})")
        LOGGER.info(f"retrain: {len(fits)} of {len(searched)} searched trials fit the budget {cost} <= {value:g}; "
                    f"{choose_within(table_points(searched, cost), value, cost).message}")
        searched = fits
    picked = [(int(r.number), "best" if i == 0 else f"top-{i + 1}")
              for i, r in enumerate(searched.head(ropts.top_k).itertuples())]
    if (ropts.base or not picked) and 0 in set(df.number):
        picked.append((0, "base"))
    rows = df.set_index("number")
    picked += [(n, TRANSFER_ROLE) for n in transfer_trials(searched, [n for n, _ in picked], rows, ropts.transfer)]
    factor = study_mosaic_factor_of(df)
    plan = []
    for number, role in picked:
        hyp = {k: float(rows.loc[number, k]) for k in HYP_KEYS}
        hyp["anchors"] = int(round(hyp["anchors"]))
        extra: dict[str, Any] = {}
        for gene in SPEED_GENES:  # the trial's image size, pruned start, width and depth: trained as it was
            if gene in rows and pd.notna(rows.loc[number, gene]):
                extra[gene] = int(rows.loc[number, gene]) if gene == "imgsz" else float(rows.loc[number, gene])
        if number in over:
            extra["over_budget"] = True
        if factor is not None:  # the mosaic the trials trained with: the gene x the study's AutoMosaic factor
            used = rows.loc[number, "mosaic_used"]
            extra["mosaic"] = float(used) if pd.notna(used) else hyp["mosaic"] * factor
        for j in range(1 if role == TRANSFER_ROLE else ropts.seeds):
            seed = cfg.seed + 1 + j
            plan.append({"trial": number, "role": role, "seed": seed, "name": f"trial{number}_seed{seed}", "hyp": hyp,
                         "trial_fitness": float(rows.loc[number, "fitness"]), **extra})
    return plan


def study_mosaic_factor_of(df: pd.DataFrame) -> float | None:
    """The study's AutoMosaic factor as its trials recorded it (evolve.csv: mosaic_used / mosaic); None for a
    study from before trials recorded it (its retrains then run AutoMosaic per hyp, as its trials did)."""
    if "mosaic_used" not in df or df.mosaic_used.isna().all():
        return None
    known = df[df.mosaic_used.notna() & (df.mosaic > 0)]
    return float((known.mosaic_used / known.mosaic).median()) if len(known) else 1.0


def retrain_within(plan: list[dict], deadline: budget.Deadline, evolve_csv: Path, epochs: int,
                   slots: int) -> list[dict]:
    """budget.retrain_within, with the transfer runs dropped first when the whole plan does not fit: the
    candidates decide what is pruned, the transfer runs only measure the search."""
    core = [r for r in plan if r["role"] != TRANSFER_ROLE]
    if len(core) < len(plan) and deadline.at is not None:
        run_s = budget.epoch_seconds(evolve_csv) * epochs
        if len(budget.trim_retrain(plan, deadline.left(), run_s, slots)) < len(plan):
            LOGGER.warning(f"budget: the {len(plan) - len(core)} transfer retrain(s) are skipped, the plan does not "
                           f"fit before the deadline {deadline.describe()}")
            plan = core
    return budget.retrain_within(plan, deadline, evolve_csv, epochs, slots)


def study_keys(cfg: StudyConfig) -> dict[str, Any]:
    """What every cached phase and run of the study depends on beyond its own options: the data's identity
    (images, labels, yaml, generator settings: core.data.identity) and the code version. Computed once per
    use (a stat per image and a read per label file)."""
    return {"data_identity": data_identity(cfg.resolved("data")), "code_version": code_version()}


def run_inputs(cfg: StudyConfig, run: dict, ropts: RetrainOptions, weights: str | None,
               keys: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes what one retrain run produces or its row holds (files by content; `keys`:
    study_keys). The objective is in: the row's `objective` column, which picks the pruned hyp, is computed with it."""
    return {"hyp": run["hyp"], "epochs": ropts.epochs, "seed": run["seed"], "imgsz": run.get("imgsz", cfg.imgsz),
            **{k: run[k] for k in (PRUNE_GENE, *SCALE_GENES) if k in run},  # the trial's start and architecture
            "batch": cfg.batch,
            "train": cfg.train, "data": cfg.data, "objective": cfg.objective,
            "model": cfg.model, "model_sha256": sha256_file(cfg.resolved("model")),
            "weights_sha256": sha256_file(weights), "fitness_weights": cfg.fitness_weights,
            "mosaic_used": run.get("mosaic"), **keys}


def _retrain_one(cfg: StudyConfig, run: dict, ropts: RetrainOptions, out: Path, device: str, weights: str | None,
                 fit: Callable[..., Any] | None) -> dict[str, Any]:
    """Train one planned run (in this process or a pool process) and return its retrain.csv row."""
    fit = fit or train_fit
    run_dir = out / run["name"]
    shutil.rmtree(run_dir, ignore_errors=True)  # results.csv appends: no rows left from an older run
    t0 = time.time()
    study_mosaic = {} if run.get("mosaic") is None else {"automosaic": False}  # as the trials (train_setup)
    if "imgsz" in run:  # the trial's searched image size
        study_mosaic["imgsz"] = run["imgsz"]
    opts = search_train_options(cfg, epochs=ropts.epochs, seed=run["seed"], device=device, project=out,
                                name=run["name"], save=True, **study_mosaic)
    hyp = run["hyp"] if run.get("mosaic") is None else {**run["hyp"], "mosaic": run["mosaic"]}
    if run.get(PRUNE_GENE):  # the trial's pruned start, as its search trial finetuned it
        weights = pruned_start(weights, run[PRUNE_GENE], out / "pruned", round_to_for(cfg.prune, device))
    model = scaled_model(cfg.resolved("model"), {k: run[k] for k in SCALE_GENES if k in run}, out / "models")
    result = fit(cfg.resolved("data"), weights or model, hyp, opts)
    best = dict(result.best or {})
    row = {"trial": run["trial"], "role": run["role"], "seed": run["seed"], "epochs": len(result.history or []),
           "trial_fitness": run["trial_fitness"],
           **{k: float(best.get(k, float("nan"))) for k in ("P", "R", "mAP50", "mAP50-95", "fitness")},
           "objective": objective_value(list(result.history or []), cfg.objective),
           "best_epoch": int(best.get("epoch", -1)), "seconds": round(time.time() - t0, 1),
           "stop_reason": str(result.stop_reason), "run": run["name"],
           **{k: run[k] for k in (*SPEED_GENES, "over_budget") if k in run}}
    if result.best_path is None:
        raise RuntimeError(f"retrain {run['name']}: training saved no best.pt (stop reason: {result.stop_reason})")
    return row


def _init_pool_process(slots: "Any") -> None:
    """A retrain process takes one device slot for its life: its GPU (masked before CUDA starts) and threads."""
    global _POOL_DEVICE
    slot = slots.get()
    os.environ.update(slot.env)  # CUDA is not started yet: torch is imported but no device was touched
    _POOL_DEVICE = slot.device
    torch.set_num_threads(slot.threads)
    cv2.setNumThreads(slot.threads)


_POOL_DEVICE = "cpu"


def _pool_retrain(args: tuple) -> dict[str, Any]:
    cfg, run, ropts, out, weights, fit = args
    return _retrain_one(cfg, run, ropts, out, _POOL_DEVICE, weights, fit)


def run_retrain(cfg: StudyConfig, plan: list[dict], ropts: RetrainOptions, out: Path, device: str,
                force: bool, fit: Callable[..., Any] | None = None, weights: str | None = None,
                parallel: bool = True) -> Path:
    """Train every planned run not already done with the same inputs (in parallel over the study's GPUs or CPU
    worker processes); write retrain.csv; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    todo = []
    keys = study_keys(cfg)
    for run in plan:
        record = out / run["name"] / "run.json"
        old = json.loads(record.read_text()) if record.is_file() else None
        inputs = _plain(run_inputs(cfg, run, ropts, weights, keys))
        change = describe_change(old.get("inputs"), inputs) if old else None
        if not force and old and change is None and (out / run["name"] / "best.pt").is_file():
            LOGGER.info(f"retrain {run['name']}: reusing {out / run['name']} (same inputs)")
            rows[run["name"]] = old["row"]
        else:
            if not force and change:
                LOGGER.info(f"retrain {run['name']}: redoing, {change}")
            todo.append(run)
    slots = device_slots(cfg)
    LOGGER.info(f"retrain: {len(todo)} run(s) of {ropts.epochs} epochs" + (f" from {weights}" if weights else "") +
                f", {min(len(slots), len(todo)) if parallel else 1} at a time")

    def done(run: dict, row: dict) -> None:
        LOGGER.info(f"  {run['name']} ({run['role']}): best epoch {row['best_epoch']}, mAP50-95 {row['mAP50-95']:.4f}, "
                    f"fitness {row['fitness']:.4f} ({row['seconds']:.0f} s)")
        atomic_write(out / run["name"] / "run.json",
                     json.dumps(_plain({"inputs": run_inputs(cfg, run, ropts, weights, keys), "row": row}), indent=1))
        rows[run["name"]] = row

    if parallel and len(slots) > 1 and len(todo) > 1:
        ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        queue = ctx.Manager().Queue()
        for slot in slots:
            queue.put(slot)
        with ProcessPoolExecutor(len(slots), mp_context=ctx, initializer=_init_pool_process,
                                 initargs=(queue,)) as pool:
            futures = {pool.submit(_pool_retrain, (cfg, run, ropts, out, weights, fit)): run for run in todo}
            for future, run in futures.items():
                done(run, future.result())
    else:
        for run in todo:
            done(run, _retrain_one(cfg, run, ropts, out, device, weights, fit))
    path = out / "retrain.csv"
    atomic_write(path, pd.DataFrame([rows[r["name"]] for r in plan]).to_csv(index=False))
    return path


def choose_candidate(retrain_csv: Path) -> dict[str, Any]:
    """The retrained hyp with the highest mean fitness over its seeds (ties: the lower trial number), and
    every retrained hyp's mean, sd and paired gain over the base hyp (same seeds) when the base was retrained."""
    df = pd.read_csv(retrain_csv)
    df = df[df.role != TRANSFER_ROLE]  # one seed each, spread over the ranking: they measure transfer only
    value = "objective" if "objective" in df else "fitness"  # the study's objective over the run's epochs
    groups = []
    for trial, g in df.groupby("trial", sort=False):
        groups.append({"trial": int(trial), "role": str(g.role.iloc[0]), "seeds": [int(s) for s in g.seed],
                       "fitness": [float(f) for f in g[value]], "trial_fitness": float(g.trial_fitness.iloc[0]),
                       **summarize(g[value].tolist()),
                       **({"over_budget": True} if "over_budget" in g and g.over_budget.fillna(False).any() else {})})
    chosen = choose(groups)
    base = next((c for c in groups if c["role"] == "base"), None)
    runs = df[df.trial == chosen["trial"]].sort_values(["fitness", "seed"], ascending=[False, True])  # its best.pt
    return {"chosen": chosen["trial"], "chosen_run": str(runs.run.iloc[0]), "candidates": groups,
            "verdict": verdict(chosen, base)}


def choose(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The group (trial, role, seeds, fitness per seed, mean) with the highest mean, ties to the lower trial.
    With a `base` group, every other group gains `paired_vs_base`: its paired t-test over the base, Holm-adjusted
    over all of them (the chosen one is picked on these same runs: evolve.noise)."""
    base = next((c for c in groups if c["role"] == "base"), None)
    if base is not None:
        others = {c["trial"]: dict(zip(c["seeds"], c["fitness"])) for c in groups if c is not base}
        compared = compare_to_base(others, dict(zip(base["seeds"], base["fitness"])))
        for c in groups:
            if c is not base:
                c["paired_vs_base"] = compared[c["trial"]]
    eligible = [c for c in groups if not c.get("over_budget")] or groups  # the base hyp over a cost budget: reference only
    return max(eligible, key=lambda c: (c["mean"], -c["trial"]))


def chosen_imgsz(retrain_csv: Path, run: str) -> int | None:
    """The image size the chosen retrain run trained at (None: the study's, no imgsz was searched)."""
    df = pd.read_csv(retrain_csv)
    if "imgsz" not in df:
        return None
    sizes = df.loc[df.run == run, "imgsz"].dropna()
    return int(sizes.iloc[0]) if len(sizes) else None


def verdict(chosen: dict, base: dict | None) -> str:
    """One plain sentence: does the pruned hyp beat the base hyp by more than seed noise?"""
    if base is None:
        return "the base hyp was not retrained (retrain: base: false): no paired comparison"
    if chosen is base:
        return (f"the base hyp has the highest retrain mean ({chosen['mean']:.4f} over {chosen['n']} seeds): "
                f"evolution found nothing better at this budget")
    p = chosen["paired_vs_base"]
    paired = f"paired over seeds {p['seeds']}, standard error {p['diff_se']:.4f}"
    if p["diff_mean"] < 0:  # below the base: the one-sided test the other way (t with n-1 df, p_less = 1 - p)
        word = "beyond" if 1 - p["p"] < p["alpha"] else "within"
        cost = (" - the base hyp is over the cost budget (the reference, not a choice): this is what the budget costs"
                if base.get("over_budget") else "")
        return (f"trial {chosen['trial']} is below the base hyp by {p['diff_mean']:+.4f} fitness ({paired}; one-sided "
                f"t-test for a loss p {1 - p['p']:.3f}): {word} seed noise at {p['alpha']:.0%}{cost}")
    word = "above" if p["above_noise"] else "within"
    holm = f", Holm over {p['tested']} candidates {p['p_holm']:.3f}" if p.get("tested", 1) > 1 else ""
    return (f"trial {chosen['trial']} beats the base hyp by {p['diff_mean']:+.4f} fitness ({paired}; one-sided "
            f"t-test p {p['p']:.3f}{holm}): {word} seed noise at {p['alpha']:.0%}")


# ---- prune ---------------------------------------------------------------------------------------------------

def prune_options(cfg: StudyConfig, weights: Path, hyp: Path, run_dir: Path, device: str, threads: int,
                  force: bool, imgsz: int | None = None) -> Any:
    """`imgsz`: the chosen trial's searched image size (a study with `imgsz_range`), else the study's."""
    from prune.pipeline import PruneOptions  # optional: see the note above the imports
    given = check_prune_section(cfg)
    base = dict(data=cfg.resolved("data"), weights=str(weights), hyp=str(hyp), imgsz=imgsz or cfg.imgsz,
                batch_size=cfg.batch,
                device=device, workers=int(cfg.train.get("workers", 0)), threads=threads, seed=cfg.seed,
                nbs=int(cfg.train.get("nbs", 64)),  # the same gradient accumulation as the trials
                project=str(run_dir), name="prune", force=force, progress=False)
    return PruneOptions(**{**base, **given})


# ---- the study -----------------------------------------------------------------------------------------------

def _device(cfg: StudyConfig) -> str:
    return "cpu" if cfg.gpus == "cpu" else cfg.gpus.split(",")[0]


def refresh_outputs(run_dir: Path, evolve_dir: Path | None = None, storage: str | None = None,
                    plots: bool = True) -> None:
    """Redraw the evolve tables/plots (from the storage) and the prune plots (from its CSVs) into run_dir.

    Without a reachable storage (an RDB URL not given again) the evolve files already beside the report are kept.
    """
    target = storage or (str(evolve_dir) if evolve_dir and (Path(evolve_dir) / "journal.log").is_file() else None)
    if target:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study, _ = open_target(target, json.loads((run_dir / STUDY_JSON).read_text()).get("name")
                               if (run_dir / STUDY_JSON).is_file() else None)
        write_outputs(study, run_dir / "evolve", plots=plots)
    if plots and (run_dir / "prune" / "prune_results.csv").is_file():
        try:
            from prune.report import write_prune_report  # optional: see above the imports
            write_prune_report(run_dir / "prune", show=False)
        except Exception as e:  # a broken plot must not cost the whole report
            LOGGER.warning(f"prune plots not redrawn: {type(e).__name__}: {e}")


def write_study_report(run_dir: Path, evolve_dir: Path | None = None, storage: str | None = None) -> Path:
    """summary.json and report.html (with its PNGs and CSVs), from the run dir's files and the storage."""
    refresh_outputs(run_dir, evolve_dir, storage)
    try:
        draw_detections(run_dir)
    except Exception as e:  # missing data or a broken checkpoint must not cost the whole report
        LOGGER.warning(f"detections not drawn: {type(e).__name__}: {e}")
    write_json_atomic(run_dir / SUMMARY_JSON, build_summary(run_dir))
    return build_report(run_dir)


def write_hyp(path: Path, hyp: dict, note: str) -> None:
    """The hyp the study prunes with, as a hyp file (`--hyp`), with a comment saying where it comes from."""
    atomic_write(path, f"# {note}\n" + yaml.safe_dump({k: hyp[k] for k in HYP_KEYS}, sort_keys=False))


def run_study(cfg: StudyConfig, run_dir: Path, evolve_dir: Path, study_file: str | None = None, force: bool = False,
              threads: int | None = None, launch_fn: Callable[..., int] | None = None,
              fit: Callable[..., Any] | None = None, prune_fn: Callable[[Any], Any] | None = None,
              deadline: budget.Deadline | None = None) -> int:
    """All phases in order (launch_fn, fit and prune_fn are injectable for tests); returns an exit code.
    The study's `budget:` and `deadline` (--timeout's) bound it in time: evolve/budget.py says how.

    Progress is logged; the report's path, the command's final summary, is printed."""
    ropts = retrain_options(cfg)
    try:
        check_prune_section(cfg)  # before hours of evolution: a typo in `prune:` fails now
        prune_error = None
    except ImportError as e:  # the pruning package is missing or broken: evolve and retrain still run
        prune_error = f"{type(e).__name__}: {e}"
    device = _device(cfg)
    # Half the cores by default: on a shared CPU, more torch threads than free cores stalls every op on barriers.
    cores = cpu_cores()
    threads = threads or max(1, cores // 2)
    torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    for folder in (run_dir, evolve_dir):
        remove_orphaned_temps(folder)  # a study killed mid-write left them
    write_provenance(run_dir, cfg, study_file, evolve_dir, device, threads)
    evolve_by, deadline = budget.phase_deadlines(run_dir / "phases" / "budget.json", cfg.budget, deadline)

    # evolve: the launcher resumes and returns at once when the study already has its trials
    t0 = time.time()
    if launch_fn is None:
        launch_fn = launch
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    code = launch_fn(cfg, cfg.storage, run_dir=evolve_dir, **({"deadline": evolve_by} if evolve_by.at else {}))
    if code != 0:
        LOGGER.warning(f"evolution stopped (exit {code}); writing a partial report")
        print(f"report: {write_study_report(run_dir, evolve_dir, cfg.storage)}")
        return code
    phase_done(run_dir, "evolve", {"config": cfg.as_record()}, [evolve_dir / "evolve.csv"], time.time() - t0)
    refresh_outputs(run_dir, evolve_dir, cfg.storage, plots=False)  # evolve.csv + best_hyp.yaml beside the report

    # retrain
    out = run_dir / "retrain"
    try:
        plan = retrain_plan(run_dir / "evolve" / "evolve.csv", cfg, ropts)
    except StudyError as e:  # e.g. every trial failed: report what there is
        LOGGER.warning(f"retrain: {e}; writing a partial report")
        print(f"report: {write_study_report(run_dir, evolve_dir, cfg.storage)}")
        return 1
    plan = retrain_within(plan, deadline, run_dir / "evolve" / "evolve.csv", ropts.epochs,
                          len(device_slots(cfg)) if fit is None else 1)
    if not plan:
        LOGGER.warning(f"retrain and prune: skipped, the study's deadline {deadline.describe()} has passed "
                       f"(raise budget: hours, or give a longer --timeout, and run again to go on)")
        print(f"report: {write_study_report(run_dir, evolve_dir, cfg.storage)}")
        return 0
    start = start_weights(cfg, evolve_dir)
    keys = study_keys(cfg)
    inputs = {"runs": [{"trial": r["trial"], "role": r["role"], **run_inputs(cfg, r, ropts, start, keys)}
                       for r in plan]}
    change = "--force" if force else phase_change(run_dir, "retrain", inputs)
    dirty = change is not None
    choice_path = out / CHOICE_JSON
    if dirty:
        t0 = time.time()
        LOGGER.info(f"retrain: {'running' if change == NO_RECORD else 'redoing'}, {change}")
        # an injected fit (tests) runs here; the real one in a process per GPU / CPU worker
        csv = run_retrain(cfg, plan, ropts, out, device, force, fit, weights=start, parallel=fit is None)
        choice = choose_candidate(csv)
        write_json_atomic(choice_path, choice)
        chosen_hyp = next(r["hyp"] for r in plan if r["trial"] == choice["chosen"])
        write_hyp(run_dir / "best_hyp.yaml", chosen_hyp, f"trial {choice['chosen']}: the highest retrain mean "
                                                         f"over seeds; {choice['verdict']}")
        phase_done(run_dir, "retrain", inputs, [csv, choice_path, run_dir / "best_hyp.yaml"], time.time() - t0)
    else:
        LOGGER.info(f"retrain: skipped, {len(plan)} run(s) in {out} match the study (--force to redo)")
    choice = json.loads(choice_path.read_text())
    LOGGER.info(f"retrain: pruning {choice['chosen_run']}; {choice['verdict']}")
    weights = out / choice["chosen_run"] / "best.pt"

    # prune
    if deadline.passed():
        LOGGER.warning(f"prune: skipped, the study's deadline {deadline.describe()} has passed (raise budget: hours, "
                       f"or give a longer --timeout, and run again to prune)")
        print(f"report: {write_study_report(run_dir, evolve_dir, cfg.storage)}")
        return 0
    if prune_error:
        LOGGER.warning(f"prune: skipped, the pruning package cannot be imported ({prune_error})")
        print(f"report: {write_study_report(run_dir, evolve_dir, cfg.storage)}")
        return 1
    imgsz = chosen_imgsz(out / "retrain.csv", choice["chosen_run"])
    phyp, note = prune_hyp(cfg, next(r for r in plan if r["trial"] == choice["chosen"]), imgsz)
    write_hyp(run_dir / "prune_hyp.yaml", phyp, f"trial {choice['chosen']} as the prune phase trains it: {note}")
    popts = prune_options(cfg, weights, run_dir / "prune_hyp.yaml", run_dir, device, threads, force, imgsz)
    inputs = {"options": {k: v for k, v in asdict(popts).items() if k not in ("force", "progress", "threads")},
              "weights_sha256": sha256_file(weights), **keys}
    change = "the retrain ran" if dirty else phase_change(run_dir, "prune", inputs)
    if change:
        dirty, t0 = True, time.time()
        LOGGER.info(f"prune: {'running' if change == NO_RECORD else 'redoing'}, {change}")
        if prune_fn is None:
            from prune.pipeline import run as prune_fn  # optional: see above the imports
        prune_fn(popts)
        phase_done(run_dir, "prune", inputs, [run_dir / "prune" / "prune_results.csv"], time.time() - t0)
    else:
        LOGGER.info(f"prune: skipped, {run_dir / 'prune'} matches the retrained weights and options (--force to redo)")

    report = write_study_report(run_dir, evolve_dir, cfg.storage)
    print(transfer_line(transfer_summary(pd.read_csv(out / "retrain.csv"))))
    print(f"report: {report}\nsummary: {run_dir / SUMMARY_JSON}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m evolve.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="studies/quick.yaml", help="study file (default studies/quick.yaml)")
    ap.add_argument("--data", type=existing_file, default=None, metavar="D.yaml",
                    help="your data yaml (YOLO format): the study on it, named after it (runs/study/NAME, NAME = the "
                    "yaml's name, or its folder's for a data.yaml) unless --name; no study file needed")
    ap.add_argument("--gpus", default=None, help="'cpu' or GPU ids '0,1,2,3' (evolution: one worker per GPU)")
    ap.add_argument("--workers", type=int, default=None, help="evolution worker processes on CPU")
    ap.add_argument("--workers-per-gpu", type=int, default=None,
                    help="processes per GPU for evolution and retrain (default 1; 2-3 for small models)")
    ap.add_argument("--trials", type=int, default=None, help="finished evolution trials in total")
    ap.add_argument("--storage", default=None, help="Optuna RDB URL (default: journal file in runs/evolve/NAME)")
    ap.add_argument("--artifacts", default=None, metavar="DIR",
                    help="folder (or s3://bucket/prefix) every machine reaches: the base run is shared through it")
    ap.add_argument("--name", default=None, help="study name (outputs in runs/evolve/NAME and runs/study/NAME)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for retrain/prune (default: half the cores)")
    ap.add_argument("--force", action="store_true", help="redo retrain and prune (evolution always resumes)")
    ap.add_argument("--timeout", type=budget.parse_timeout, default=None, metavar="TIME",
                    help="start nothing new after TIME (seconds, or 90m, 2h) from now; evolution gets the study "
                    "file's budget share of it (docs/evolve.md)")
    ap.add_argument("--report-only", metavar="RUN_DIR", default=None,
                    help="only rebuild RUN_DIR/report.html from its CSVs and the evolution storage")
    return ap.parse_args(argv)


def data_study_name(data: str) -> str:
    """The study name for `--data D.yaml`: the yaml's name, or its folder's when the yaml is a generic data.yaml
    (as dataset exports name it), in letters, digits, '.', '_' and '-'."""
    path = Path(data).expanduser().absolute()
    name = path.parent.name if path.stem.lower() in ("data", "dataset") and path.parent.name else path.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


def report_only(run_dir: Path, storage: str | None) -> Path:
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--report-only {run_dir}: no such run dir (expected runs/study/NAME)")
    rec = json.loads((run_dir / STUDY_JSON).read_text()) if (run_dir / STUDY_JSON).is_file() else {}
    evolve_dir = Path(rec["evolve_dir"]) if rec.get("evolve_dir") else None
    return write_study_report(run_dir, evolve_dir, storage)


@main_guard("evolve.study")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.report_only:
            print(f"report: {report_only(Path(args.report_only), args.storage)}")
            return 0
        study = Path(args.study)
        if not study.exists() and (REPO / study).exists():
            study = REPO / study
        overrides = {"gpus": args.gpus, "workers": args.workers, "workers_per_gpu": args.workers_per_gpu,
                     "trials": args.trials, "storage": args.storage, "artifacts": args.artifacts,
                     "name": args.name or (data_study_name(args.data) if args.data else None),
                     "data": str(Path(args.data).expanduser().absolute()) if args.data else None}
        cfg = load_study(study, overrides)
        return run_study(cfg, RUNS / cfg.name, Path("runs") / "evolve" / cfg.name, str(args.study), args.force,
                         args.threads, deadline=budget.timeout_deadline(args.timeout))
    except (StudyError, FileNotFoundError, ValueError) as e:
        print(f"evolve.study: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume (finished phases and runs are kept)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
