"""Plots drawn from evolve.csv's frame (and the study, for importances): pure functions of stored results."""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from evolve.objectives import GENE_LABELS, GENE_TAGS, SPEED_GENES  # noqa: E402
from evolve.pareto import choose_within, pareto_front, table_points  # noqa: E402
from evolve.results import best_searched, searched_ranked  # noqa: E402

LOGGER = logging.getLogger(__name__)

MIN_TRIALS_FOR_IMPORTANCE = 8
plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "figure.dpi": 100})


def plot_evolve(df: pd.DataFrame, names: list[str], path: Path | str, log_names: tuple[str, ...] = ()) -> Path | None:
    """One panel per evolved hyp: value vs fitness, coloured by trial number, best trial starred.

    Hyps in `log_names` (sampled on a log scale) get a log x axis.
    """
    done = df[df.state.isin(["COMPLETE", "PRUNED"]) & np.isfinite(df.fitness.astype(float))]
    if done.empty or not names:
        return None
    best = best_searched(df)
    cols = min(5, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows + 1.0), squeeze=False)
    height = 2.9 * rows + 1.0
    fig.subplots_adjust(hspace=0.65, wspace=0.3, left=0.06, right=0.91, bottom=0.35 / height, top=1 - 1.5 / height)
    norm = plt.Normalize(df.number.min(), max(df.number.max(), 1))
    sc = None
    for ax, name in zip(axes.flat, names):
        complete = done[done.state == "COMPLETE"]
        pruned = done[done.state == "PRUNED"]
        sc = ax.scatter(complete[name], complete.fitness, c=complete.number, cmap="viridis", norm=norm, s=22,
                        edgecolors="none", alpha=0.85)
        if len(pruned):
            ax.scatter(pruned[name], pruned.fitness, facecolors="none", edgecolors="grey", s=22, linewidths=0.8)
        title = name
        if best is not None:
            ax.scatter([best[name]], [best.fitness], marker="*", s=170, c="red", edgecolors="black", linewidths=0.6,
                       zorder=5)
            title = f"{name}\nbest = {best[name]:.4g}"
        ax.set_title(title, fontsize=10)
        if name in log_names:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("log scale", fontsize=8)
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("fitness")
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    if sc is not None:
        cbar = fig.colorbar(sc, cax=fig.add_axes([0.93, 0.3, 0.012, 0.4]))
        cbar.set_label("trial number")
    subtitle = "red star = best searched trial (its value in each panel title); colour = trial number"
    if (done.state == "PRUNED").any():
        subtitle += "; hollow grey = pruned (fitness when stopped)"
    fig.suptitle(f"Evolved hyperparameters vs fitness ({len(done)} trials)\n{subtitle}", fontsize=13)
    fig.savefig(path)  # no bbox_inches='tight': it draws the 25 panels twice
    plt.close(fig)
    return Path(path)


def plot_fitness(df: pd.DataFrame, path: Path | str, title: str = "") -> Path | None:
    """Fitness per trial with the best-so-far line; pruned and failed trials marked."""
    if df.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    fit = df.fitness.astype(float)
    complete = df[(df.state == "COMPLETE") & np.isfinite(fit)]
    pruned = df[(df.state == "PRUNED") & np.isfinite(fit)]
    failed = df[df.state == "FAIL"]
    noise = complete[complete["noise"].astype(bool)] if "noise" in complete else complete.iloc[:0]
    if len(noise) >= 2:  # the base hyp over its seeds: what a trial must clear to mean anything
        mean, sd = float(noise.fitness.mean()), float(noise.fitness.std(ddof=1))
        ax.axhspan(mean - 2 * sd, mean + 2 * sd, color="grey", alpha=0.15, zorder=1,
                   label=f"base hyp ± 2 sd over {len(noise)} seeds ({mean:.4g} ± {2 * sd:.2g})")
        ax.axhline(mean, color="grey", lw=1, ls="--", zorder=1)
        ax.scatter(noise.number, noise.fitness, c="grey", edgecolors="black", s=30, zorder=3,
                   label=f"base hyp, noise seeds ({len(noise)})")
        complete = complete.drop(noise.index)
    ax.scatter(complete.number, complete.fitness, c="tab:blue", s=30, label=f"complete ({len(complete)})", zorder=3)
    if len(pruned):
        ax.scatter(pruned.number, pruned.fitness, marker="v", c="tab:orange", s=40,
                   label=f"pruned ({len(pruned)}, fitness when stopped)", zorder=3)
    searched = searched_ranked(df)
    if len(searched):  # the base hyp's own trials measure seed noise, not the search's progress
        order = searched.sort_values("number")
        best_so_far = order.fitness.astype(float).cummax().to_numpy()
        ax.step(order.number, best_so_far, where="post", c="tab:green", lw=1.8, label="best searched so far")
        b = best_searched(df)
        if b is not None:
            ax.scatter([b.number], [b.fitness], marker="*", s=220, c="red", edgecolors="black", zorder=4,
                       label=f"best searched: trial {int(b.number)} ({b.fitness:.4g})")
    if len(failed):
        finite = fit[np.isfinite(fit)]
        y0 = float(finite.min()) if len(finite) else 0.0
        ax.scatter(failed.number, np.full(len(failed), y0), marker="x", c="red", s=45,
                   label=f"failed ({len(failed)}, drawn at the lowest fitness)", zorder=3)
    ax.set_xlabel("trial number")
    ax.set_ylabel("trial fitness (the study's objective)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    ax.set_title(title or "Fitness per trial")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_importances(study: optuna.Study, names: list[str], path: Path | str) -> Path | None:
    """Optuna parameter importances (fANOVA) once enough trials completed; None when not possible."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE or not names:
        return None
    params = [n for n in names if all(n in t.params for t in complete)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitness = (lambda t: t.values[0]) if len(study.directions) > 1 else None  # two objectives: fitness's
            imp = optuna.importance.get_param_importances(study, params=params, target=fitness)
    except Exception as e:  # e.g. all values equal: importances are undefined
        LOGGER.warning(f"importances skipped: {type(e).__name__}: {e}")
        return None
    if not imp:
        return None
    items = sorted(imp.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(items) + 1.4))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel("importance for fitness (fANOVA, sums to 1)")
    rough = "; few trials: a rough ranking" if len(complete) < 4 * len(params) else ""
    ax.set_title(f"Hyperparameter importances\n({len(complete)} complete trials{rough})", fontsize=10)
    ax.tick_params(axis="y", labelsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


COST_LABELS = {"latency_ms": "latency (ms, batch 1, CPU, median)", "gflops": "GFLOPs at the trial's image size"}


def plot_pareto(df: pd.DataFrame, cost: str, path: Path | str, budget: float | None = None,
                title: str = "") -> Path | None:
    """Fitness vs cost of every complete trial (coloured by image size where searched, the base hyp's trials as
    squares; latency's p25-p75 as a bar), the Pareto front as a step line (the best fitness reachable at each
    cost), the budget as a vertical line and the searched trial it chooses as a star."""
    points = table_points(df, cost)
    if not points:
        return None
    rows = df.set_index("number")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x = [p.cost for p in points]
    y = [p.fitness for p in points]
    if cost == "latency_ms" and {"latency_p25", "latency_p75"} <= set(rows):
        lo = [p.cost - float(rows.loc[p.trial, "latency_p25"]) for p in points]
        hi = [float(rows.loc[p.trial, "latency_p75"]) - p.cost for p in points]
        ax.errorbar(x, y, xerr=[lo, hi], fmt="none", ecolor="#bbbbbb", elinewidth=1, zorder=1)
    # colour: the first speed gene the trials vary (image size, pruning share, width, depth), else the image size
    varied = [g for g in SPEED_GENES if g in rows and rows[g].nunique() >= 2]
    gene = varied[0] if varied else "imgsz"
    gene_label = GENE_LABELS[gene]
    sizes = [rows.loc[p.trial, gene] for p in points] if gene in rows else [np.nan] * len(points)
    base = [bool(rows.loc[p.trial, "base"]) if "base" in rows else False for p in points]
    norm = plt.Normalize(np.nanmin(sizes), np.nanmax(sizes)) if np.isfinite(sizes).any() else None
    for is_base, marker, label in ((False, "o", "searched trials"), (True, "s", "base hyp (reference)")):
        idx = [i for i, b in enumerate(base) if b == is_base]
        if idx:
            sc = ax.scatter([x[i] for i in idx], [y[i] for i in idx], c=[sizes[i] for i in idx] if norm else "tab:blue",
                            cmap="viridis", norm=norm, marker=marker, s=30, zorder=2, label=label)
    if norm is not None and len(set(sizes)) > 1:
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label=gene_label)
    front = pareto_front(points)
    fx, fy = [p.cost for p in front], [p.fitness for p in front]
    ax.step(fx + [max(x)], fy + [fy[-1]], where="post", color="tab:red", lw=1.5, zorder=3,
            label=f"Pareto front ({len(front)} trials)")
    ax.scatter(fx, fy, facecolors="none", edgecolors="tab:red", s=70, zorder=3)
    if budget is not None:
        ax.axvline(budget, color="black", ls="--", lw=1, label=f"budget {cost} <= {budget:g}")
        choice = choose_within(table_points(df, cost, searched=True), budget, cost)  # as the retrain chooses
        if choice.chosen is not None:
            c = choice.chosen
            ax.scatter([c.cost], [c.fitness], marker="*", s=260, color="gold", edgecolors="black", zorder=4,
                       label=f"chosen: trial {c.trial}")
    named = [g for g in varied if g != "imgsz"]  # a pruned share or multiples: each front point's own in its label
    for i, p in enumerate(front):  # labels alternate above and below: neighbours on the front do not overlap
        genes = ", ".join(GENE_TAGS[g].format(rows.loc[p.trial, g]) for g in named
                          if not (g == "prune_share" and rows.loc[p.trial, g] == 0))
        ax.annotate(f"{p.trial}" + (f" ({genes})" if genes else ""), (p.cost, p.fitness), textcoords="offset points",
                    xytext=(5, 4 if i % 2 == 0 else -12), fontsize=8)
    ax.set_xlabel(COST_LABELS.get(cost, cost))
    ax.set_ylabel("fitness (trial value)")
    ax.set_title(title or f"Fitness vs {cost}: {len(points)} complete trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
