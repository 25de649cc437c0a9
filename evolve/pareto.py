"""The accuracy-vs-cost front of a two-objective study, and the point a cost budget picks.

Each trial is a point (fitness f: higher is better, cost c: latency in ms or GFLOPs, lower is better).
Point a dominates point b when a is no worse in both and better in at least one: f_a >= f_b and c_a <= c_b
and (f_a, c_a) != (f_b, c_b). The Pareto front is the set of points no other point dominates. Ties:
points equal in both objectives do not dominate each other, so all of them stay on the front; a point
equal to another in one objective and worse in the other is dominated.

The budget picks the best fitness among points with c <= budget (ties: the lower cost, then the lower trial
number): that point is always on the front, since a point dominating it would fit the budget too and be at
least as good. When no point fits, nothing is chosen and the message names the cheapest point.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from evolve.objectives import SPEED_GENES

__all__ = ["BudgetChoice", "Point", "choose_within", "dominates", "pareto_front", "study_front", "table_points"]


@dataclass(frozen=True)
class Point:
    trial: int
    fitness: float
    cost: float

    def finite(self) -> bool:
        return math.isfinite(self.fitness) and math.isfinite(self.cost)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dominates(a: Point, b: Point) -> bool:
    """a is no worse than b in both objectives and better in one."""
    return (a.fitness >= b.fitness and a.cost <= b.cost) and (a.fitness > b.fitness or a.cost < b.cost)


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The non-dominated points (NaN or infinite objectives left out), cheapest first.

    One sweep in cost order (cost up, fitness down, trial up): a point is on the front when its fitness beats
    every cheaper-or-equal point's, or when it equals the last front point in both objectives (a tie)."""
    front: list[Point] = []
    best = -math.inf
    for p in sorted((p for p in points if p.finite()), key=lambda p: (p.cost, -p.fitness, p.trial)):
        if p.fitness > best:
            front.append(p)
            best = p.fitness
        elif front and (p.fitness, p.cost) == (front[-1].fitness, front[-1].cost):
            front.append(p)
    return front


@dataclass(frozen=True)
class BudgetChoice:
    """The point a budget picks (None when no point fits), the cheapest point, and a sentence saying which."""
    chosen: Point | None
    cheapest: Point | None
    message: str


def choose_within(points: Iterable[Point], budget: float, cost_name: str = "cost") -> BudgetChoice:
    """The best fitness among the points with cost <= budget (ties: lower cost, then lower trial number)."""
    finite = [p for p in points if p.finite()]
    cheapest = min(finite, key=lambda p: (p.cost, -p.fitness, p.trial)) if finite else None
    fits = [p for p in finite if p.cost <= budget]
    if not fits:
        if cheapest is None:
            return BudgetChoice(None, None, f"no trial has both a fitness and a {cost_name}: nothing to choose")
        return BudgetChoice(None, cheapest, f"no trial fits the budget {cost_name} <= {budget:g}: the closest is "
                                            f"trial {cheapest.trial} at {cheapest.cost:.4g} (fitness "
                                            f"{cheapest.fitness:.4f}); raise the budget or search cheaper settings")
    chosen = min(fits, key=lambda p: (-p.fitness, p.cost, p.trial))
    return BudgetChoice(chosen, cheapest, f"trial {chosen.trial}: the best fitness {chosen.fitness:.4f} within "
                                          f"{cost_name} <= {budget:g} (its {cost_name} {chosen.cost:.4g}; "
                                          f"{len(fits)} of {len(finite)} trials fit)")


def table_points(df: Any, cost: str, searched: bool = False) -> list[Point]:
    """The complete trials of evolve.csv (a DataFrame) with a finite fitness and cost, as points; `searched`: only
    the trials a sampler chose (not the base hyp's own trials, the `base` column)."""
    if cost not in df or "fitness" not in df:
        return []
    done = df[df.state == "COMPLETE"]
    if searched and "base" in done:
        done = done[~done.base.fillna(False).astype(bool)]
    points = [Point(int(r.number), float(r.fitness), float(r[cost])) for _, r in done.iterrows()]
    return [p for p in points if p.finite()]


def study_front(df: Any, objectives: list[str], budget: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """summary.json's `pareto`: the objectives, the cost budget, the front's points (cheapest first, with the
    trial's image size and latency quartiles where recorded) and the chosen point with the sentence saying
    why; None for a fitness-only study. The front is drawn over every trial; the choice is among the searched
    ones, as the retrain's candidates are (the base hyp's trials are the reference it is compared with)."""
    if len(objectives) < 2:
        return None
    cost = objectives[1]
    points = table_points(df, cost)
    rows = df.set_index("number") if "number" in df else None

    def row(p: Point | None) -> dict[str, Any] | None:
        if p is None:
            return None
        extra = {}
        if rows is not None:
            for key in (*SPEED_GENES, "latency_p25", "latency_p75", "base"):
                if key in rows and p.trial in rows.index:
                    v = rows.loc[p.trial, key]
                    extra[key] = bool(v) if key == "base" else int(v) if key == "imgsz" and v == v else float(v)
        return {**p.as_dict(), **extra}
    limit = float(budget[cost]) if budget and cost in budget else None
    out: dict[str, Any] = {"objectives": list(objectives), "directions": ["maximize", "minimize"],
                           "budget": {cost: limit} if limit is not None else None, "trials": len(points),
                           "front": [row(p) for p in pareto_front(points)], "chosen": None, "message": None}
    if limit is not None:
        choice = choose_within(table_points(df, cost, searched=True), limit, cost)
        out.update(chosen=row(choice.chosen), closest=row(choice.cheapest) if choice.chosen is None else None,
                   message=choice.message)
    return out
