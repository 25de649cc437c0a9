"""Tables from the storage alone: evolve.csv (one row per trial) and best_hyp.yaml (the best trial's hyp)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.trial import FrozenTrial, TrialState

from core.atomic import atomic_write
from core.hyp import HYP_KEYS, default_hyp
from evolve.objectives import COST_ATTRS, fitness_value, has_fitness
from evolve.noise import is_noise_trial, noise_floor, noise_trials

__all__ = ["best_searched", "best_trial", "trials_frame", "write_tables"]

METRICS = ("P", "R", "mAP50", "mAP50-95")


def complete_ranked(df: pd.DataFrame) -> pd.DataFrame:
    """evolve.csv's complete trials with a finite fitness, best first (ties: the earlier trial)."""
    fit = pd.to_numeric(df.fitness, errors="coerce")
    done = df[(df.state == "COMPLETE") & fit.notna() & (fit.abs() != math.inf)]
    return done.sort_values(["fitness", "number"], ascending=[False, True])


def searched_ranked(df: pd.DataFrame) -> pd.DataFrame:
    """The complete trials whose hyp a sampler chose, best first. The base hyp's own trials (trial 0 and its
    noise seeds, the `base` column) are left out: they measure seed noise, and a lucky seed of the base hyp
    is not a search result."""
    done = complete_ranked(df)
    return done[~done.base.fillna(False).astype(bool)] if "base" in done else done


def best_searched(df: pd.DataFrame) -> pd.Series | None:
    """The best searched trial: what the search found (None before one completes)."""
    done = searched_ranked(df)
    return None if done.empty else done.iloc[0]


def base_hyp_of(study: optuna.Study) -> dict[str, float]:
    """The study's base hyp as recorded at creation (defaults if the study predates that record)."""
    return {**default_hyp(), **{k: float(v) for k, v in (study.user_attrs.get("base_hyp") or {}).items()}}


def evolved_names(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> list[str]:
    """Hyps that some trial suggested, in HYP_KEYS order."""
    names = set((study.user_attrs.get("space_evolved") or []))
    for t in trials if trials is not None else study.get_trials(deepcopy=False):
        names.update(t.params)
    return [k for k in HYP_KEYS if k in names]


def log_scaled(study: optuna.Study) -> tuple[str, ...]:
    """Hyps whose distribution is log-scaled (read from the trials themselves)."""
    names = set()
    for t in study.get_trials(deepcopy=False):
        names.update(k for k, d in t.distributions.items() if getattr(d, "log", False))
    return tuple(sorted(names))


def trial_fitness(t: FrozenTrial) -> float:
    """Best-epoch fitness: the value of a COMPLETE trial, the recorded/last-reported one of a PRUNED trial."""
    if t.state == TrialState.COMPLETE and fitness_value(t) is not None:
        return float(fitness_value(t))
    if "fitness" in t.user_attrs:
        return float(t.user_attrs["fitness"])
    if t.intermediate_values:
        return float(max(t.intermediate_values.values()))
    return math.nan


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, sampler, worker, device, every hyp, metrics, epochs, seconds, fail reason."""
    base = base_hyp_of(study)
    sampler = (study.user_attrs.get("config") or {}).get("sampler", "")
    trials = study.get_trials(deepcopy=False)
    floor = noise_floor(trials)
    counted = {t.number for t in noise_trials(trials)}
    costs = [k for k in COST_ATTRS if any(k in t.user_attrs for t in trials)]  # two-objective or imgsz-searching
    rows: list[dict[str, Any]] = []
    for t in trials:
        ua = t.user_attrs
        duplicate = t.state == TrialState.COMPLETE and t.number not in counted  # a seed already measured
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "sampler": ua.get("sampler", sampler),
                               "worker": ua.get("worker"), "device": ua.get("device"),
                               "base": bool(ua.get("base", False)), "noise": is_noise_trial(t) and not duplicate,
                               "seed": ua.get("seed", ua.get("train_seed"))}
        row.update({k: float(t.params.get(k, base[k])) for k in HYP_KEYS})
        row["mosaic_used"] = ua.get("mosaic_used", math.nan)  # mosaic x the study's AutoMosaic factor (train_setup)
        row.update({m: ua.get(m, math.nan) for m in METRICS})
        row["fitness"] = trial_fitness(t)
        row["gain_sd"] = floor.gain_sd(row["fitness"]) if floor is not None else math.nan
        row["epochs"] = ua.get("epochs", len(t.intermediate_values))
        row["seconds"] = ua.get("seconds", math.nan)
        row["overhead_seconds"] = ua.get("overhead_seconds", math.nan)
        row["fail_reason"] = ua.get("fail_reason", "") if t.state == TrialState.FAIL else ""
        row["retry_of"] = ua.get("retry_of", "")
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        row.update({k: ua.get(k, math.nan) for k in costs})
        rows.append(row)
    columns = ["number", "state", "sampler", "worker", "device", "base", "noise", "seed", *HYP_KEYS, "mosaic_used",
               *METRICS, "fitness", "gain_sd", "epochs", "seconds",
               "overhead_seconds", "fail_reason", "retry_of", "datetime_start", "datetime_complete", *costs]
    return pd.DataFrame(rows, columns=columns)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if has_fitness(t)]
    return max(done, key=lambda t: (fitness_value(t), -t.number)) if done else None


def best_hyp_text(study: optuna.Study) -> str | None:
    """best_hyp.yaml content: a comment header plus `_`-prefixed fields (ignored by core.hyp.load_hyp)."""
    t = best_trial(study)
    if t is None:
        return None
    hyp = {**base_hyp_of(study), **{k: float(v) for k, v in t.params.items()}}
    header = {"_study": study.study_name, "_trial": t.number, "_fitness": round(float(fitness_value(t)), 6)}
    header.update({f"_{m}": round(float(t.user_attrs[m]), 6) for m in METRICS if m in t.user_attrs})
    ua = t.user_attrs
    lines = [f"# Best hyp of study '{study.study_name}': trial {t.number}, fitness {fitness_value(t):.5f}",
             "# " + ", ".join(f"{m} {ua[m]:.4f}" for m in METRICS if m in ua),
             f"# {ua.get('epochs', '?')} epochs, {ua.get('seconds', float('nan')):.1f} s on {ua.get('device', '?')}; "
             "keys starting with '_' are provenance (ignored when loaded as a hyp)"]
    values = {k: (int(round(hyp[k])) if k == "anchors" else hyp[k]) for k in HYP_KEYS}  # a whole count
    body = yaml.safe_dump({**header, **values}, sort_keys=False)
    return "\n".join(lines) + "\n" + body


def write_tables(study: optuna.Study, out_dir: Path | str) -> dict[str, Path]:
    """Write evolve.csv and best_hyp.yaml (atomically, so a reader never sees half a file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "evolve.csv"}
    atomic_write(paths["csv"], trials_frame(study).to_csv(index=False))
    text = best_hyp_text(study)
    if text is not None:
        paths["best_hyp"] = out / "best_hyp.yaml"
        atomic_write(paths["best_hyp"], text)
    return paths
