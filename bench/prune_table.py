"""`python -m bench.prune_table runs/prune/NAME [--headline]`: a pruning run's table into bench/results/prune.md.

prune.pipeline writes one row per stage to RUN/prune_results.csv (prune/records.py) and the options of each
stage to RUN/<stage>.json. This command renders the csv as the pipeline's classic table in markdown (metrics
down, stages across, as prune.report prints it), under the recipe read from the last stage's json and above
prune.report's summary line (GFLOPs cut, CPU latency speedup against the FLOPs ratio, mAP50-95 change), and
appends it to bench/results/prune.md (`--no-record`: print only). `--headline` also puts the summary figures
in the README's headline table: `make record-prune` does, for `make prune`'s run (NAME=shapes).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pandas as pd

from bench.record import markdown_table
from bench.run_table import run_table_main
from prune.records import SIDE_STAGES, STAGES
from prune.report import LABELS, TABLE_ROWS, cells, summary, target_summary

HEADLINE = "Pruning pipeline (make prune, built-in data): GFLOPs, mAP50-95 before -> after finetune, CPU latency"


def table(run_dir: Path) -> str:
    """The recipe line, the stages table and the summary line of one pipeline run folder."""
    df = pd.read_csv(run_dir / "prune_results.csv")
    rows = [(key, *("-" if _missing(v) else c for v, c in zip(df[key], cells(df, key, fmt))))
            for key, fmt in TABLE_ROWS if key in df]
    target = target_summary(run_dir, df)
    return "\n".join([f"{run_dir}: {recipe(run_dir)}", "",
                      markdown_table(["", *(LABELS.get(s, s) for s in df["stage"])], rows), "", summary(df),
                      *(["", target] if target else [])])


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def recipe(run_dir: Path) -> str:
    """The chain's options as recorded by its last stage ('-' where the run folder holds no stage json)."""
    chain = [s for s in STAGES if s not in SIDE_STAGES and (run_dir / f"{s}.json").is_file()]
    if not chain:
        return "-"
    opts = json.loads((run_dir / f"{chain[-1]}.json").read_text()).get("options", {})
    parts = []
    for stage, keys in (("baseline", ("epochs", "optimizer", "imgsz", "batch_size", "seed")),
                        ("sparse", ("penalty", "s", "s_schedule", "sparse_epochs", "optimizer")),
                        ("channel", ("global_percent", "round_to", "iterative")), ("layer", ("shortcuts",)),
                        ("finetune", ("finetune_epochs", "optimizer"))):
        o = opts.get(stage) or {}
        if stage == "sparse" and not o.get("sr"):
            continue
        shown = ", ".join(f"{k} {o[k]}" for k in keys if o.get(k) is not None)
        if shown:
            parts.append(f"{stage} ({shown})")
    return "; ".join(parts) or "-"


def headline(run_dir: Path) -> dict[str, str]:
    """GFLOPs cut, mAP50-95 of the first and the last stage, and the latency speedup against the FLOPs ratio."""
    df = pd.read_csv(run_dir / "prune_results.csv")
    base, last = df.iloc[0], df.iloc[-1]
    flops_ratio, speedup = base["GFLOPs"] / last["GFLOPs"], base["latency_ms"] / last["latency_ms"]
    return {HEADLINE: f"GFLOPs -{100 * (1 - 1 / flops_ratio):.1f}%, mAP50-95 {base['mAP50-95']:.4f} -> "
                      f"{last['mAP50-95']:.4f}, latency {speedup:.2f}x "
                      f"({speedup / flops_ratio:.2f} of the FLOPs ratio)"}


main = functools.partial(run_table_main, "prune", "bench.prune_table", table, headline)


if __name__ == "__main__":
    raise SystemExit(main())
