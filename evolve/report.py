"""Redraw a study's outputs from its storage alone: `python -m evolve.report RUN_DIR_OR_STORAGE_URL`.

Writes evolve.csv, best_hyp.yaml, evolve.png, fitness.png, (with enough complete trials) importances.png and,
for a two-objective study, pareto.png (fitness vs cost, the front, the budget) into the run dir (or --out). The launcher calls `write_outputs` as trials finish.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna

from evolve.objectives import cost_budget, cost_objective
from evolve.plots import plot_evolve, plot_fitness, plot_importances, plot_pareto
from evolve.results import evolved_names, log_scaled, trials_frame, write_tables
from evolve.storage import mask_url, open_target
from core.cli import main_guard


__all__ = ["write_outputs"]


def write_outputs(study: optuna.Study, out_dir: Path | str, plots: bool = True) -> dict[str, Path]:
    """All tables (and plots) of `study` into `out_dir`; returns {kind: path} of what was written."""
    out = Path(out_dir)
    paths = write_tables(study, out)
    if not plots:
        return paths
    df = trials_frame(study)
    names = evolved_names(study)
    log_names = log_scaled(study)
    done = int((df.state == "COMPLETE").sum())
    cfg = study.user_attrs.get("config") or {}
    title = f"Study '{study.study_name}': fitness per trial ({cfg.get('sampler', '?')} sampler, {done} complete)"
    for kind, draw in (("evolve_png", lambda: plot_evolve(df, names, out / "evolve.png", log_names)),
                       ("fitness_png", lambda: plot_fitness(df, out / "fitness.png", title)),
                       ("importances_png", lambda: plot_importances(study, names, out / "importances.png")),
                       ("pareto_png", lambda: _pareto(df, cfg, out / "pareto.png"))):
        p = draw()
        if p:
            paths[kind] = p
    return paths


def _pareto(df, cfg: dict, path: Path) -> Path | None:
    """pareto.png of a two-objective study (None for a fitness-only one)."""
    cost = cost_objective(cfg.get("objectives") or ["fitness"])
    if cost is None:
        return None
    limit = cost_budget(cfg.get("budget") or {})
    return plot_pareto(df, cost, path, limit[1] if limit else None,
                       f"Study '{cfg.get('name', '?')}': fitness vs {cost} ({cfg.get('sampler', '?')} sampler)")


@main_guard("evolve.report")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Redraw evolve.csv, best_hyp.yaml and plots from a study's storage.")
    ap.add_argument("target", help="run dir (runs/evolve/NAME, holding journal.log) or an Optuna storage URL")
    ap.add_argument("--name", default=None, help="study name (needed when the storage holds several)")
    ap.add_argument("--out", default=None, help="output dir (default: the run dir, or runs/evolve/NAME for a URL)")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study, out = open_target(args.target, args.name)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"evolve.report: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else out
    paths = write_outputs(study, out)
    print(f"study '{study.study_name}' from {mask_url(args.target)}: {len(study.trials)} trials")
    for kind, p in paths.items():
        print(f"  {kind:16s} {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
