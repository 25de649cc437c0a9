"""`python -m bench.fidelity_train`: finished trainings of our engine and of YOLOv5 v7.0 side by side, each mAP
under both engines' ways of counting.

The two validators count differently (docs/recipe-vs-yolov5.md, Validation): ours keeps each box's best class
and integrates COCO's step AP; YOLOv5's val.py keeps every class above conf_thres per box (multi-label) and
integrates an interpolated envelope. A model that cannot yet tell its classes apart scores far higher under
multi-label, so an mAP from YOLOv5's results.csv compares with ours only under YOLOv5's counting: each of our
runs' best.pt is validated again with `core.val --multi-label --ap-method yolov5`. YOLOv5's checkpoints are
pickled models, which we do not load; their figures are YOLOv5's own.

    python -m bench.fidelity_train --data D.yaml --imgsz 160 --ours NAME=RUN_DIR ... --yolov5 NAME=RUN_DIR ...

The table is appended to bench/results/fidelity.md (`--no-record`: not).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.record import markdown_table, publish
from core.val import run as validate_checkpoint

FITNESS = {"mAP50": 0.1, "mAP50-95": 0.9}  # both engines pick their best epoch by this


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fidelity_train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the data yaml both engines trained and validated on")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--ours", nargs="*", default=[], metavar="NAME=DIR", help="our run folders (results.csv, best.pt)")
    p.add_argument("--yolov5", nargs="*", default=[], metavar="NAME=DIR", help="YOLOv5 run folders (results.csv)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    rows = [ours_row(name, Path(d), args.data, args.imgsz) for name, d in map(named, args.ours)]
    rows += [yolov5_row(name, Path(d)) for name, d in map(named, args.yolov5)]
    header = ["run", "best epoch", "mAP50-95, our counting", "mAP50-95, YOLOv5's counting",
              "train cls loss, first -> last"]
    publish("fidelity", markdown_table(header, rows), "bench.fidelity_train", argv, keep=not args.no_record)
    return 0


def named(text: str) -> tuple[str, str]:
    name, sep, folder = text.partition("=")
    if not sep:
        raise SystemExit(f"expected NAME=DIR, got {text!r}")
    return name, folder


def best_epoch(table: pd.DataFrame, map50: str, map5095: str) -> pd.Series:
    """The row of the best epoch by fitness (0.1 mAP50 + 0.9 mAP50-95), as both trainers choose best.pt."""
    fitness = FITNESS["mAP50"] * table[map50] + FITNESS["mAP50-95"] * table[map5095]
    return table.loc[fitness.idxmax()]


def ours_row(name: str, folder: Path, data: str, imgsz: int) -> list[str]:
    table = pd.read_csv(folder / "results.csv")
    best = best_epoch(table, "mAP50", "mAP50-95")
    theirs = validate_checkpoint(["--weights", str(folder / "best.pt"), "--data", data, "--imgsz", str(imgsz),
                                  "--multi-label", "--ap-method", "yolov5", "--workers", "0"])
    return [name, str(int(best["epoch"])), f"{best['mAP50-95']:.4f}", f"{theirs['mAP50-95']:.4f}",
            f"{table['train_cls'].iloc[0]:.4f} -> {table['train_cls'].iloc[-1]:.4f}"]


def yolov5_row(name: str, folder: Path) -> list[str]:
    table = pd.read_csv(folder / "results.csv")
    table.columns = [c.strip() for c in table.columns]  # YOLOv5 pads its headers
    best = best_epoch(table, "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")
    return [name, str(int(best["epoch"])), "-", f"{best['metrics/mAP_0.5:0.95']:.4f}",
            f"{table['train/cls_loss'].iloc[0]:.4f} -> {table['train/cls_loss'].iloc[-1]:.4f}"]


if __name__ == "__main__":
    sys.exit(main())
