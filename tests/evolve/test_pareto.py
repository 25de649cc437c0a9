"""The accuracy-vs-cost front (evolve/pareto.py) and the budget's choice, against brute force; the study fields
that ask for two objectives (evolve/objectives.py), with their errors."""
import itertools
import random

import pytest

from evolve.pareto import Point, choose_within, dominates, pareto_front
from evolve.study_config import StudyError, load_study


def brute_front(points):
    """Every finite point no other point dominates, by checking all pairs."""
    finite = [p for p in points if p.finite()]
    return {p for p in finite if not any(dominates(q, p) for q in finite)}


def random_points(rng, n):
    # few distinct values, so ties in one objective and exact duplicates in both are common
    return [Point(i, rng.choice([0.1, 0.2, 0.3, 0.4, float("nan")] if rng.random() < 0.1 else [0.1, 0.2, 0.3, 0.4]),
                  rng.choice([1.0, 2.0, 3.0, 4.0])) for i in range(n)]


def test_dominates_needs_one_strict_improvement():
    a = Point(0, 0.5, 2.0)
    assert dominates(a, Point(1, 0.4, 2.0)) and dominates(a, Point(1, 0.5, 3.0)) and dominates(a, Point(1, 0.1, 9.0))
    assert not dominates(a, Point(1, 0.5, 2.0))  # equal in both: neither dominates
    assert not dominates(a, Point(1, 0.6, 3.0)) and not dominates(Point(1, 0.6, 3.0), a)  # a trade-off


def test_front_is_the_brute_force_front_and_non_dominated():
    rng = random.Random(0)
    for n in (0, 1, 2, 5, 12, 40):
        for _ in range(60):
            pts = random_points(rng, n)
            front = pareto_front(pts)
            assert set(front) == brute_front(pts)
            assert len(front) == len(set(front))  # each point once
            assert not any(dominates(a, b) for a, b in itertools.permutations(front, 2))
            assert [p.cost for p in front] == sorted(p.cost for p in front)  # cheapest first
            assert [p.fitness for p in front] == sorted(p.fitness for p in front)  # and fitness rises with cost


def test_front_keeps_exact_ties_and_drops_one_sided_ties():
    pts = [Point(0, 0.3, 2.0), Point(1, 0.3, 2.0), Point(2, 0.3, 3.0), Point(3, 0.2, 2.0), Point(4, 0.5, 5.0)]
    assert [p.trial for p in pareto_front(pts)] == [0, 1, 4]


def test_budget_takes_the_best_fitness_within_it_on_the_front():
    rng = random.Random(1)
    for _ in range(200):
        pts = random_points(rng, rng.randint(1, 15))
        budget = rng.choice([0.5, 1.0, 2.5, 4.0])
        c = choose_within(pts, budget, "latency_ms")
        fits = [p for p in pts if p.finite() and p.cost <= budget]
        if not fits:
            assert c.chosen is None
            if c.cheapest is not None:
                assert f"trial {c.cheapest.trial}" in c.message and "no trial fits" in c.message
            continue
        best = max(p.fitness for p in fits)
        assert c.chosen.fitness == best and c.chosen.cost <= budget
        assert c.chosen.cost == min(p.cost for p in fits if p.fitness == best)  # ties: the cheaper
        assert c.chosen in pareto_front(pts)


def test_no_point_fits_names_the_closest():
    c = choose_within([Point(3, 0.4, 12.0), Point(5, 0.2, 9.5), Point(6, 0.1, 30.0)], 8.0, "latency_ms")
    assert c.chosen is None and c.cheapest == Point(5, 0.2, 9.5)
    assert c.message.startswith("no trial fits the budget latency_ms <= 8: the closest is trial 5 at 9.5")


@pytest.mark.parametrize("fields, msg", [
    ({"objectives": ["fitness", "latency_ms"], "sampler": "ga"}, "'sampler'='ga' ranks one value"),
    ({"objectives": ["fitness", "latency_ms"], "sampler": "cmaes"}, "use one of nsga2, tpe, random"),
    ({"objectives": ["fitness", "gflops"], "sampler": "nsga2", "pruner": "median"}, "use pruner: none"),
    ({"objectives": ["fitness", "watts"], "sampler": "nsga2"}, "COST one of latency_ms, gflops"),
    ({"objectives": "latency_ms"}, "must be a list"),
    ({"objectives": ["latency_ms", "fitness"], "sampler": "nsga2"}, r"\[fitness, COST\]"),
    ({"budget": {"latency_ms": 5}}, "limits a cost the study does not measure"),
    ({"objectives": ["fitness", "gflops"], "sampler": "nsga2", "budget": {"latency_ms": 5}}, "objectives: \\[fitness, latency_ms\\]"),
    ({"objectives": ["fitness", "gflops"], "sampler": "nsga2", "budget": {"gflops": -1}}, "'budget.gflops'=-1 must be > 0"),
    ({"objectives": ["fitness", "gflops"], "sampler": "nsga2", "budget": {"gflops": "low"}}, "must be a number"),
    ({"imgsz_range": [96, 200], "sampler": "tpe"}, "multiples of 32"),
    ({"imgsz_range": [192, 96], "sampler": "tpe"}, "LOW < HIGH"),
    ({"imgsz_range": [192, 256], "sampler": "tpe"}, "'imgsz'=160 .* must lie in imgsz_range"),
    ({"imgsz_range": [96, 256]}, "with sampler 'ga': the GA .* would draw imgsz at random"),
])
def test_study_errors_name_the_field(fields, msg):
    with pytest.raises(StudyError, match=msg) as e:
        load_study("studies/quick.yaml", fields)
    assert "studies/quick.yaml" in str(e.value)


def test_two_objective_fields_load():
    cfg = load_study("studies/quick.yaml", {"objectives": ["fitness", "latency_ms"], "sampler": "tpe",
                                            "budget": {"latency_ms": 8, "hours": 1}, "imgsz_range": [96, 224]})
    assert cfg.objectives == ["fitness", "latency_ms"] and cfg.budget == {"latency_ms": 8, "hours": 1}
    assert load_study("studies/quick.yaml").objectives == ["fitness"]
