"""runs/study/NAME/summary.json: the study's figures in one machine-readable file, from the run dir's files.

Users script on it and the benchmarks read it: the noise floor (the base hyp over its seeds), the best
trial and its gain in noise units beside the expected best of as many noise draws, every retrained candidate's mean and sd with its paired gain over
the base hyp, the chosen candidate and the verdict, the transfer from trials to full training (Spearman's rho
between trial and retrained values, its n, a warning when the ranking is not to be trusted: evolve/transfer.py),
pruning before/after, and each phase's wall time. A two-objective study adds `pareto`: its front, the cost budget
and the point chosen within it (evolve/pareto.py).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from core.atomic import atomic_write
from evolve.noise import expected_best_sd
from evolve.pareto import study_front
from evolve.results import best_searched, complete_ranked, searched_ranked
from evolve.transfer import transfer_summary

SUMMARY_JSON = "summary.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Strict JSON (NaN -> null), written atomically."""
    atomic_write(path, json.dumps(_finite(obj), indent=1, default=str))


def _finite(obj: Any) -> Any:
    """NaN/inf -> None: strict JSON readers reject NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _noise(df: pd.DataFrame) -> dict[str, Any] | None:
    if "noise" not in df:
        return None
    noise = df[df.noise.astype(bool) & (df.state == "COMPLETE") & df.fitness.notna()]
    if len(noise) < 2:
        return None
    return {"mean": float(noise.fitness.mean()), "sd": float(noise.fitness.std(ddof=1)), "n": int(len(noise)),
            "trials": [int(n) for n in noise.number], "seeds": [None if pd.isna(s) else int(s) for s in noise.seed]}


def _evolution(df: pd.DataFrame) -> dict[str, Any]:
    """Trial counts; the best trial (which may be one of the base hyp's own seeds: `base` says so) and the
    best searched trial (what the search found)."""
    done = complete_ranked(df)
    out: dict[str, Any] = {"trials": int(len(df)), "complete": int(len(done)),
                           "pruned": int((df.state == "PRUNED").sum()), "failed": int((df.state == "FAIL").sum())}

    def trial(r: pd.Series) -> dict[str, Any]:
        return {"number": int(r.number), "fitness": float(r.fitness), "mAP50-95": float(r["mAP50-95"]),
                "gain_sd": float(r.get("gain_sd", math.nan)), "base": bool(r.get("base", r.number == 0))}
    if not done.empty:
        out["best_trial"] = trial(done.iloc[0])
    searched = best_searched(df)
    out["best_searched_trial"] = trial(searched) if searched is not None else None
    if searched is not None:  # the selection caveat: the best of N noise draws, in the same sd units
        n = int(len(searched_ranked(df)))
        out["best_searched_trial"].update({"searched_trials": n, "expected_best_noise_sd": expected_best_sd(n)})
    return out


def _prune(csv: Path) -> dict[str, Any] | None:
    if not csv.is_file():
        return None
    df = pd.read_csv(csv)
    if df.empty:
        return None
    first, last = df.iloc[0], df.iloc[-1]

    def row(r: pd.Series) -> dict[str, Any]:
        keys = ("mAP50", "mAP50-95", "fitness", "params", "GFLOPs", "latency_ms", "onnx_latency_ms")
        return {k: (float(r[k]) if k in r and pd.notna(r[k]) else None) for k in keys} | {"stage": str(r.stage)}
    return {"before": row(first), "after": row(last)}


def _transfer(csv: Path) -> dict[str, Any] | None:
    try:
        df = pd.read_csv(csv)
    except (OSError, pd.errors.EmptyDataError):
        return None
    return transfer_summary(df) if {"trial", "role", "seed", "trial_fitness"} <= set(df) else None


def build_summary(run_dir: Path | str) -> dict[str, Any]:
    """The summary of whatever phases the run dir holds (missing ones are null)."""
    run_dir = Path(run_dir)
    study = _read_json(run_dir / "study.json")
    evolve_csv = run_dir / "evolve" / "evolve.csv"
    df = pd.read_csv(evolve_csv) if evolve_csv.is_file() else None
    evolve_dir = Path(study["evolve_dir"]) if study.get("evolve_dir") else None
    base_run = _read_json(evolve_dir / "base" / "run.json") if evolve_dir else {}
    phases = {p.stem: _read_json(p).get("seconds") for p in sorted((run_dir / "phases").glob("*.json"))}
    if base_run.get("seconds") is not None:
        phases["base"] = base_run["seconds"]  # inside the evolve phase's time
    choice = _read_json(run_dir / "retrain" / "choice.json")
    config = study.get("config") or {}
    pareto = study_front(df, config.get("objectives") or ["fitness"], config.get("budget")) if df is not None else None
    return {
        "study": study.get("name"), "updated": study.get("updated"), "config": study.get("config"),
        "base_run": {k: base_run.get(k) for k in ("fitness", "mAP50-95", "best_epoch", "seconds")} if base_run else None,
        "noise": _noise(df) if df is not None else None,
        "evolution": _evolution(df) if df is not None else None,
        "retrain": ({"candidates": choice.get("candidates"), "chosen": choice.get("chosen"),
                     "chosen_run": choice.get("chosen_run"), "verdict": choice.get("verdict")} if choice else None),
        "transfer": _transfer(run_dir / "retrain" / "retrain.csv"),
        "prune": _prune(run_dir / "prune" / "prune_results.csv"),
        "seconds": phases,
        **({"pareto": pareto} if pareto else {}),  # two-objective studies only
    }
