"""Which trial objective ranks hyps most stably across seeds: `python -m bench.objective_stability DIR`.

DIR holds training runs named `<hyp>_s<seed>/results.csv` (the same hyps trained with several seeds, as
trials are). For each objective (best epoch, last epoch, mean of the last K epochs) it prints:
- concordance: over every pair of seeds and every pair of hyps, the share of hyp pairs that both seeds
  order the same way (1 = the seed never changes the ranking, 0.5 = a coin);
- separation: the variance of the hyps' seed means over the mean within-hyp (seed) variance (an F-like
  ratio: how far apart hyps are in units of seed noise).
The objective with the highest concordance (then separation) is the one a study should optimise. The table
is appended to bench/results/objective_stability.md (`--no-record`: not).
"""
from __future__ import annotations

import argparse
import itertools
import re
import statistics
import sys
from pathlib import Path

import pandas as pd

from bench.record import markdown_table, publish
from evolve.objective import objective_value

OBJECTIVES = ("best", "last", "mean_last_2", "mean_last_3")


def load_runs(root: Path) -> dict[str, dict[int, list[dict]]]:
    """{hyp: {seed: per-epoch rows}} from ROOT/<hyp>_s<seed>/results.csv."""
    runs: dict[str, dict[int, list[dict]]] = {}
    for csv in sorted(root.glob("*_s*/results.csv")):
        m = re.fullmatch(r"(.+)_s(\d+)", csv.parent.name)
        if m:
            runs.setdefault(m.group(1), {})[int(m.group(2))] = pd.read_csv(csv).to_dict("records")
    return runs


def stability(runs: dict[str, dict[int, list[dict]]], objective: str) -> dict[str, float]:
    values = {h: {s: objective_value(rows, objective) for s, rows in seeds.items()} for h, seeds in runs.items()}
    seeds = sorted(set.intersection(*(set(v) for v in values.values())))
    agree = total = 0
    for s1, s2 in itertools.combinations(seeds, 2):
        for h1, h2 in itertools.combinations(sorted(values), 2):
            d1, d2 = values[h1][s1] - values[h2][s1], values[h1][s2] - values[h2][s2]
            agree += (d1 > 0) == (d2 > 0)
            total += 1
    means = [statistics.fmean(v[s] for s in seeds) for v in values.values()]
    within = statistics.fmean(statistics.variance([v[s] for s in seeds]) for v in values.values())
    return {"concordance": agree / total if total else float("nan"),
            "separation": statistics.variance(means) / within if within > 0 else float("inf"),
            "hyps": len(values), "seeds": len(seeds)}


def table(root: Path, runs: dict[str, dict[int, list[dict]]]) -> str:
    """Concordance and separation of every objective, as markdown under a line naming the runs."""
    rows = []
    for objective in OBJECTIVES:
        st = stability(runs, objective)
        rows.append((objective, f"{st['concordance']:.3f}", f"{st['separation']:.2f}"))
    return (f"{root}: {len(runs)} hyps, seeds per hyp {sorted(len(s) for s in runs.values())}\n\n"
            + markdown_table(["objective", "concordance", "separation"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="folder of <hyp>_s<seed>/results.csv runs")
    ap.add_argument("--no-record", action="store_true",
                    help="do not append the table to bench/results/objective_stability.md")
    args = ap.parse_args(argv)
    runs = load_runs(args.dir)
    runs = {h: s for h, s in runs.items() if len(s) >= 2}
    if len(runs) < 2:
        print(f"{args.dir}: need at least 2 hyps with 2 or more seeds each (<hyp>_s<seed>/results.csv)", file=sys.stderr)
        return 2
    text = table(args.dir, runs)
    publish("objective_stability", text, "bench.objective_stability", argv, keep=not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
