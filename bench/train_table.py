"""`python -m bench.train_table runs/train/NAME`: one training run's per-epoch table into bench/results/train.md.

core.train writes RUN/results.csv (one row per epoch, core/run_dir.py) and RUN/opt.yaml (its options). This
command renders the epochs as a markdown table (train box and cls loss, P, R, mAP50, mAP50-95, seconds) under
a line naming the run's model, data, epochs, image size, batch, optimizer and seed, with the best epoch and
the total time below, and appends it to bench/results/train.md (`--no-record`: print only).
"""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

from bench.record import markdown_table
from bench.run_table import run_table_main
from core.run_dir import read_history

OPTIONS = ("model", "data", "epochs", "imgsz", "batch_size", "optimizer", "close_mosaic", "seed", "workers")
COLUMNS = (("epoch", "epoch", "{:d}"), ("train_box", "train box loss", "{:.4f}"),  # results.csv key, header, format
           ("train_cls", "train cls loss", "{:.4f}"), ("P", "P", "{:.3f}"), ("R", "R", "{:.3f}"),
           ("mAP50", "mAP50", "{:.4f}"), ("mAP50-95", "mAP50-95", "{:.4f}"), ("seconds", "s/epoch", "{:.1f}"))


def table(run_dir: Path) -> str:
    history = read_history(run_dir / "results.csv")
    opts = yaml.safe_load((run_dir / "opt.yaml").read_text()) if (run_dir / "opt.yaml").is_file() else {}
    setting = ", ".join(f"{k} {opts[k]}" for k in OPTIONS if opts.get(k) is not None)
    rows = [[fmt.format(h[key]) if key in h else "-" for key, _, fmt in COLUMNS] for h in history]
    best = max(history, key=lambda h: h.get("mAP50-95", -1.0))
    total = sum(h.get("seconds", 0.0) for h in history)
    return "\n".join([f"{run_dir}: {setting or 'opt.yaml not found'}", "",
                      markdown_table([label for _, label, _ in COLUMNS], rows), "",
                      f"best mAP50-95 {best.get('mAP50-95', float('nan')):.4f} at epoch {best['epoch']}; "
                      f"{total:.0f} s of epochs in all"])


main = functools.partial(run_table_main, "train", "bench.train_table", table, None)


if __name__ == "__main__":
    raise SystemExit(main())
