"""`python -m prune.report RUN_DIR`: the classic table and the plots, redrawn from the run's files only.

Reads prune_results.csv, gamma.jsonl (sparse stage) and channels.csv; writes stages.png, gamma.png
and channels.png beside them.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from core.cli import main_guard
from prune.int8 import with_int8

__all__ = ["LABELS", "TABLE_ROWS", "cells", "classic_table", "summary", "target_summary", "write_prune_report"]

LABELS = {"baseline": "Before", "sparse": "After sparse", "keep_size": "Keep-size (gammas 0)",
          "unstructured": "Unstructured L1", "channel": "After channels",
          "layer": "After layers", "finetune": "After finetune", "int8": "INT8 (onnxruntime)"}
TABLE_ROWS = [("P", "{:.4f}"), ("R", "{:.4f}"), ("mAP50", "{:.4f}"), ("mAP50-95", "{:.4f}"),
              ("fitness", "{:.4f}"), ("params", "{:,.0f}"), ("GFLOPs", "{:.3f}"), ("latency_ms", "{:.2f}"),
              ("onnx_latency_ms", "{:.2f}"), ("ckpt_MB", "{:.2f}"), ("onnx_MB", "{:.2f}"), ("channels_kept", "{:.0f}"),
              ("channels_pruned", "{:.0f}"), ("prune_ratio", "{:.3f}")]


def cells(df: pd.DataFrame, key: str, fmt: str) -> list[str]:
    """One table row's cells; a latency row reads 'median (p25-p75)' where the run recorded the quartiles."""
    lo, hi = key[:-3] + "_p25_ms", key[:-3] + "_p75_ms"
    if not (key.endswith("latency_ms") and lo in df and hi in df):
        return ["-" if pd.isna(v) else fmt.format(v) for v in df[key]]  # "-": a figure the column does not have
    return ["-" if pd.isna(m) else fmt.format(m) if math.isnan(a) or math.isnan(b)
            else f"{fmt.format(m)} ({fmt.format(a)}-{fmt.format(b)})" for m, a, b in zip(df[key], df[lo], df[hi])]


def classic_table(df: pd.DataFrame) -> str:
    """Metrics down, stages across (Before | After channels | After layers | After finetune)."""
    cols = [LABELS.get(s, s) for s in df["stage"]]
    rows = [(key, cells(df, key, fmt)) for key, fmt in TABLE_ROWS if key in df]
    width = max(14, *(len(c) + 2 for c in cols), *(len(c) + 2 for _, row in rows for c in row))
    lines = [f"{'':<16}" + "".join(f"{c:>{width}}" for c in cols)]
    lines += [f"{key:<16}" + "".join(f"{c:>{width}}" for c in row) for key, row in rows]
    return "\n".join(lines)


def target_summary(run_dir: Path, df: pd.DataFrame) -> str | None:
    """'target ...: met/missed' for a run pruned to a target (target.json): the share the search chose and the
    last stage's figure from the table (a latency with its p25-p75 from the final interleaved timing)."""
    path = Path(run_dir) / "target.json"
    if not path.is_file():
        return None
    t = json.loads(path.read_text())
    metric, value, tol = t["target"]["metric"], t["target"]["value"], t["target"]["tolerance"]
    col = "onnx_latency_ms" if metric == "latency_ms" and t.get("backend") == "onnxruntime" else metric
    last = df.iloc[-1]
    got = float(last[col]) if col in df else math.nan
    spread = ""
    if col.endswith("latency_ms") and col[:-3] + "_p25_ms" in df:
        spread = f" (p25-p75 {last[col[:-3] + '_p25_ms']:.2f}-{last[col[:-3] + '_p75_ms']:.2f})"
    where = f" in {t['backend']}" if t.get("backend") else ""
    if t.get("speedup"):
        where += f" ({t['speedup']:g}x faster than the start's {t['start_ms']:.3f} ms)"
    verdict = "no figure" if math.isnan(got) else "met" if got <= value * (1 + tol) else "MISSED"
    if t.get("speedup") and col in df and not math.isnan(got):  # a relative target: read in the table's own loop,
        # where the first stage is timed beside the last (absolute ms differ between loops)
        reached = float(df.iloc[0][col]) / got
        verdict = (f"{reached:.2f}x in the table's loop: "
                   + ("met" if reached * (1 + tol) >= t["speedup"] else "MISSED"))
    refill = Path(run_dir) / "refill.json"
    if refill.is_file():
        r = json.loads(refill.read_text())
        grown = sum(v > 0 for v in r["grow"].values())
        verdict += (f"; refill: +{r['channels_added']} channels in {grown} groups "
                    f"({len(r['tried'])} candidates tried)")
    return (f"target {metric} <= {value:g}{where} (tolerance +{tol:.0%}): global share {t['share']:.4f} found in "
            f"{len(t['trials'])} candidates (search: {t['achieved']:.4g}); achieved by "
            f"{LABELS.get(last['stage'], last['stage'])}: {got:.4g}{spread}: {verdict}")


def summary(df: pd.DataFrame) -> str:
    """GFLOPs cut, FLOPs ratio vs latency speedup, mAP change: baseline against the last stage."""
    base, last = df.iloc[0], df.iloc[-1]
    flops_ratio = base["GFLOPs"] / last["GFLOPs"]
    speedup = base["latency_ms"] / last["latency_ms"]
    threads = int(base["threads"]) if "threads" in df else "?"
    size = int(base["latency_imgsz"]) if "latency_imgsz" in df else int(base["imgsz"])
    return (f"{LABELS.get(last['stage'], last['stage'])} vs Before: GFLOPs -{100 * (1 - 1 / flops_ratio):.1f}% "
            f"(FLOPs ratio {flops_ratio:.2f}x), CPU latency speedup {speedup:.2f}x "
            f"({speedup / flops_ratio:.2f} of the FLOPs ratio; batch 1, {size}px, fused, {threads} thread(s)), "
            f"params -{100 * (1 - last['params'] / base['params']):.1f}%, "
            f"mAP50-95 {last['mAP50-95'] - base['mAP50-95']:+.4f}" + _onnx_summary(df))


def _onnx_summary(df: pd.DataFrame) -> str:
    """onnxruntime's latency of the first and last stage beside PyTorch's (same threads, same loop)."""
    if "onnx_latency_ms" not in df or df["onnx_latency_ms"].iloc[[0, -1]].isna().any():
        return ""
    b, last = df.iloc[0], df.iloc[-1]
    return (f"; onnxruntime {b['onnx_latency_ms']:.2f} -> {last['onnx_latency_ms']:.2f} ms (speedup "
            f"{b['onnx_latency_ms'] / last['onnx_latency_ms']:.2f}x; {last['latency_ms'] / last['onnx_latency_ms']:.2f}x "
            f"faster than PyTorch on the last stage)")


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib  # heavy: only the plots need it; the tables (classic_table, summary) are imported without it
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    return plt


def plot_stages(df: pd.DataFrame, path: Path) -> None:
    plt = _pyplot()
    labels = [LABELS.get(s, s) for s in df["stage"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [("mAP50-95", "mAP50-95", "{:.4f}", "tab:blue"), ("GFLOPs", "GFLOPs (imgsz %d)" % df["imgsz"].iloc[0],
              "{:.3f}", "tab:orange"), ("latency_ms", "CPU latency, ms (batch 1, %dpx, fused)" % df.get("latency_imgsz", df["imgsz"]).iloc[0],
              "{:.1f}", "tab:green")]
    for ax, (key, title, fmt, color) in zip(axes, panels):
        bars = ax.bar(range(len(df)), df[key], color=color, alpha=0.85)
        ax.bar_label(bars, [fmt.format(v) for v in df[key]], fontsize=8, padding=2)
        if key == "mAP50-95" and df[key].iloc[0] > 0.01:  # the tolerance line only when it is on the chart
            ax.axhline(df[key].iloc[0] - 0.01, color="gray", ls=":", lw=1, label="Before - 0.01")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_xticks(range(len(df)), labels, fontsize=8, rotation=35, ha="right", rotation_mode="anchor")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, max(df[key].max() * 1.18, 1e-6))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Pruning stages", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gamma(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    edges = np.array(rows[0]["edges"], dtype=float)
    lo = edges[1] / (edges[2] / edges[1])  # draw the [0, 1e-5) bin just left of 1e-5 on the log axis
    x = np.concatenate([[lo], edges[1:]])
    used = np.nonzero(np.sum([r["counts"] for r in rows], axis=0))[0]
    cmap = plt.get_cmap("viridis")
    drawn = [rows[i] for i in sorted({round(j * (len(rows) - 1) / 7) for j in range(8)})]  # <= 8 curves stay readable
    for k, r in enumerate(drawn):
        share = np.array(r["counts"], dtype=float) / max(r["n"], 1)
        label = "before" if r["epoch"] < 0 else f"epoch {r['epoch']}"
        ax.stairs(share, x, color=cmap(k / max(len(drawn) - 1, 1)), lw=1.6, label=label)
    ax.set_xscale("log")
    ax.set_xlim(min(x[used[0]], 3e-3) / 1.5, x[used[-1] + 1] * 1.5)  # occupied bins and the 1e-2 line
    ax.axvline(1e-2, color="gray", ls="--", lw=1)
    ax.set_xlabel("|gamma| of prunable BNs (bin left of 1e-5: below 1e-5)")
    ax.set_ylabel("share of channels")
    ax.set_title("|gamma| distribution during sparse training", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ep = [r["epoch"] for r in rows]
    ax2.plot(ep, [100 * r["share_small"] for r in rows], "o-", label="% |gamma| < 1e-2")
    ax2.set_xlabel("epoch (-1 = before)")
    ax2.set_ylabel("% of channels below 1e-2", color="tab:blue")
    ax2.set_ylim(0, max(5.0, 110 * max(r["share_small"] for r in rows)))
    ax2.set_xticks(ep[:: -(-len(ep) // 12)])  # at most ~12 labels
    ax3 = ax2.twinx()
    ax3.plot(ep, [r["median"] for r in rows], "s--", color="tab:red", label="median |gamma|")
    ax3.set_ylim(0, 1.1 * max(r["median"] for r in rows))
    ax3.set_ylabel("median |gamma|", color="tab:red")
    ax2.set_title("sparsity per epoch", fontsize=10)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_channels(df: pd.DataFrame, path: Path) -> None:
    plt = _pyplot()
    n = len(df)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(10, 0.22 * n), 4.8))
    ax.bar(x, df["before"], color="lightgray", label="before", width=0.85)
    ax.bar(x, df["after_channel"], color="tab:blue", alpha=0.8, label="after channel pruning", width=0.85)
    removed = df["after_layer"] == 0
    ax.bar(x[removed], df["after_channel"][removed], color="tab:red", alpha=0.8, width=0.85,
           label="removed by layer pruning")
    ax.set_xticks(x, df["conv"].str.replace("model.", "", regex=False), rotation=90, fontsize=6)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylabel("output channels")
    ax.set_xlabel("prunable conv (layer index . module path)")
    kept = df["after_layer"].sum() / df["before"].sum()
    ax.set_title(f"Channels per prunable conv (kept {100 * kept:.1f}% of {df['before'].sum():,})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_prune_report(run_dir: str | Path, show: bool = True) -> dict[str, Path]:
    """Print the table and write the plots that the run's files allow; returns the written paths.

    The table (`show`) is the final summary of both prune commands (tests/prune/test_pipeline.py reads it
    from stdout)."""
    run_dir = Path(run_dir)
    csv = run_dir / "prune_results.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: no results (run python -m prune.pipeline first)")
    df = pd.read_csv(csv)
    out = {"stages": run_dir / "stages.png"}
    plot_stages(df, out["stages"])
    gamma = run_dir / "gamma.jsonl"
    if gamma.is_file() and "sparse" in set(df["stage"]):
        rows = [json.loads(line) for line in gamma.read_text().splitlines() if line.strip()]
        if rows:
            out["gamma"] = run_dir / "gamma.png"
            plot_gamma(rows, out["gamma"])
    channels = run_dir / "channels.csv"
    if channels.is_file():
        out["channels"] = run_dir / "channels.png"
        plot_channels(pd.read_csv(channels), out["channels"])
    if show:
        print(classic_table(with_int8(df, run_dir)))  # + the INT8 column where the run has one (prune/int8.py)
        if len(df) > 1 and not math.isnan(df["latency_ms"].iloc[-1]):
            print(summary(df))
        target = target_summary(run_dir, df)
        if target:
            print(target)
        print(f"results: {csv}; plots: {', '.join(str(p) for p in out.values())}")
    return out


@main_guard("prune.report")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m prune.report RUN_DIR", file=sys.stderr)
        return 2
    try:
        write_prune_report(argv[0])
    except FileNotFoundError as e:
        print(f"prune.report: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
