"""What a study optimizes: `objectives: [fitness]` (the default: one value, maximized) or `[fitness, COST]`
(two: fitness maximized, COST minimized; COST = latency_ms or gflops), with an optional cost budget
`budget: {latency_ms: X}` that picks the point the retrain and prune phases take (evolve/pareto.py).

A two-objective study is an Optuna multi-objective study: each trial's values are [fitness, cost], so
`FrozenTrial.value` does not exist for it; `fitness_value` reads the fitness of either kind. Only samplers
that handle several objectives are allowed (NSGA-II, TPE, random: the GA and CMA-ES rank one value), and no
pruner (Optuna's pruners read one value per epoch; Trial.report is single-objective only).

The cost is what trades against fitness; in a study whose trials finetune one checkpoint the architecture is
fixed, so the searched image size (`imgsz_range: [LOW, HIGH]`, a gene in steps of 32) is what moves it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from optuna.trial import FrozenTrial

__all__ = ["COST_ATTRS", "COSTS", "FITNESS", "GENE_FORMATS", "GENE_HEADERS", "GENE_LABELS", "GENE_TAGS",
           "MULTI_SAMPLERS", "SPEED_GENES", "check_objectives", "cost_budget",
           "cost_objective", "fitness_value", "has_fitness", "study_directions"]

FITNESS = "fitness"
COSTS = {"latency_ms": "batch-1 CPU latency, ms (median of timed runs)", "gflops": "GFLOPs at the trial's imgsz"}
MULTI_SAMPLERS = ("nsga2", "tpe", "random")
# the genes that change a trial's speed (imgsz; prune_share: evolve/prune_gene.py; the multiples:
# evolve/scale_gene.py): trial user attrs and evolve.csv columns, carried to the retrain, the front and the report
SPEED_GENES = ("imgsz", "prune_share", "width_multiple", "depth_multiple")
# how each is shown: a table column's header, a plot axis's label, the value alone, the value named in a label
GENE_HEADERS = {"imgsz": "imgsz", "prune_share": "pruned share", "width_multiple": "width", "depth_multiple": "depth"}
GENE_LABELS = {"imgsz": "image size (px)", "prune_share": "pruned share of BN gammas",
               "width_multiple": "width multiple", "depth_multiple": "depth multiple"}
GENE_FORMATS = {"imgsz": "{:.0f}", "prune_share": "{:.2f}", "width_multiple": "{:.4g}", "depth_multiple": "{:.3g}"}
GENE_TAGS = {"imgsz": "{:.0f} px", "prune_share": "pruned {:.2f}", "width_multiple": "width {:.4g}",
             "depth_multiple": "depth {:.3g}"}
COST_ATTRS = (*SPEED_GENES, "latency_ms", "latency_p25", "latency_p75", "gflops")  # evolve.csv columns
STRIDE = 32  # the detector's largest stride: every image size is a multiple of it


def cost_objective(objectives: Sequence[str]) -> str | None:
    """The cost objective's name (latency_ms or gflops), None for a fitness-only study."""
    return objectives[1] if len(objectives) > 1 else None


def study_directions(objectives: Sequence[str]) -> list[str]:
    return ["maximize"] + ["minimize"] * (len(objectives) - 1)


def cost_budget(budget: Mapping[str, Any]) -> tuple[str, float] | None:
    """(cost name, limit) of the study's `budget:` (latency_ms or gflops), None without one."""
    for name in COSTS:
        if name in budget:
            return name, float(budget[name])
    return None


def check_objectives(objectives: Any, budget: Mapping[str, Any], sampler: str, pruner: str,
                     imgsz_range: Any, imgsz: int, where: str) -> list[str]:
    """The study's objectives, checked against its budget, sampler, pruner and imgsz range (errors name the
    field and value); returns them as a list."""
    if isinstance(objectives, str) or not isinstance(objectives, Sequence) or not objectives:
        raise ValueError(f"{where}: 'objectives'={objectives!r} must be a list: [fitness] or [fitness, COST] "
                         f"with COST one of {', '.join(COSTS)}")
    objectives = [str(o) for o in objectives]
    if objectives[0] != FITNESS or len(objectives) > 2 or (len(objectives) == 2 and objectives[1] not in COSTS):
        raise ValueError(f"{where}: 'objectives'={objectives!r}: give [fitness] or [fitness, COST] with COST one of "
                         f"{', '.join(COSTS)} (fitness is maximized, the cost minimized)")
    cost = cost_objective(objectives)
    limits = [k for k in COSTS if k in budget]
    if len(limits) > 1:
        raise ValueError(f"{where}: 'budget' limits {limits}: give one cost limit")
    for key in limits:
        try:
            value = float(budget[key])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: 'budget.{key}'={budget[key]!r} must be a number") from None
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{where}: 'budget.{key}'={budget[key]!r} must be > 0")
        if key != cost:
            raise ValueError(f"{where}: 'budget.{key}' limits a cost the study does not measure: add it to the "
                             f"objectives (objectives: [fitness, {key}]), got objectives {objectives!r}")
    if cost is not None:
        if sampler not in MULTI_SAMPLERS:
            raise ValueError(f"{where}: 'sampler'={sampler!r} ranks one value and the study has two objectives "
                             f"{objectives}: use one of {', '.join(MULTI_SAMPLERS)} (nsga2: NSGA-II; tpe: "
                             f"multi-objective TPE)")
        if pruner not in (None, "none"):
            raise ValueError(f"{where}: 'pruner'={pruner!r}: Optuna's pruners judge one value per epoch and the "
                             f"study has two objectives {objectives}: use pruner: none")
    if imgsz_range:
        if (not isinstance(imgsz_range, Sequence) or len(imgsz_range) != 2
                or not all(isinstance(v, int) and v % STRIDE == 0 and v >= STRIDE for v in imgsz_range)
                or not imgsz_range[0] < imgsz_range[1]):
            raise ValueError(f"{where}: 'imgsz_range'={imgsz_range!r} must be [LOW, HIGH], multiples of {STRIDE} "
                             f"with LOW < HIGH (the searched image size)")
        if sampler == "ga":
            raise ValueError(f"{where}: 'imgsz_range'={list(imgsz_range)} with sampler 'ga': the GA evolves the space "
                             f"file's genes and would draw imgsz at random; use nsga2, tpe or random")
        if not imgsz_range[0] <= imgsz <= imgsz_range[1]:
            raise ValueError(f"{where}: 'imgsz'={imgsz} is the base hyp's size (trial 0 and the noise seeds) and "
                             f"must lie in imgsz_range {list(imgsz_range)}")
    return objectives


def fitness_value(t: FrozenTrial) -> float | None:
    """The trial's fitness (its first objective) in a one- or two-objective study; None when it has none."""
    values = t.values
    return None if not values else float(values[0])


def has_fitness(t: FrozenTrial) -> bool:
    """The trial has a finite fitness."""
    f = fitness_value(t)
    return f is not None and math.isfinite(f)
