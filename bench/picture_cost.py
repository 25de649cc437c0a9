"""What the run folder's pictures cost: `python -m bench.picture_cost` (`make bench-pictures`).

Trains once with the trainer's defaults for pictures and trackers (labels.png at set-up, the first training
batches, results.png and TensorBoard each epoch, the final PR/F1 curves, confusion matrix and validation
batches), timing the trainer's own "pictures" phase over the whole run with bench.train_profile's PhaseTimer.
The share of the run's wall time spent there is the pictures' cost: both clocks run in one process, so the
ratio holds on a busy host where two separate runs would not compare.
`--compare` also trains the same seeded run with --no-plots and TensorBoard off, right after, and reports the
wall-time ratio of the two (noisier: the host's load may change between them).
The run folder stays in runs/bench/pictures/ to be looked at; the table goes to bench/results/pictures.md.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from bench.record import command_line, markdown_table, record, write_json
from bench.train_profile import PhaseTimer
from core.train import TrainOptions, fit

__all__ = ["main", "picture_cost"]


def _train(data: str | None, model: str, hyp: str | None, opts: TrainOptions) -> tuple[PhaseTimer, float, list]:
    timer = PhaseTimer()
    t0 = time.perf_counter()
    result = fit(data, model, hyp, opts, timer.callbacks())
    return timer, time.perf_counter() - t0, result.history


def picture_cost(data: str | None, model: str, hyp: str | None, epochs: int, imgsz: int, batch: int, seed: int,
                 project: Path, compare: bool) -> dict:
    """Seconds in each part of the pictures phase, the run's wall time, and (compare) the run without them."""
    shutil.rmtree(project / "pictures", ignore_errors=True)
    base = dict(epochs=epochs, batch_size=batch, imgsz=imgsz, seed=seed, project=str(project), exist_ok=True,
                progress=False)
    timer, wall, history = _train(data, model, hyp, TrainOptions(**base, name="pictures"))
    per_epoch = [ep.total.get("pictures", 0.0) for ep in timer.epochs]
    out = {"model": model, "hyp": hyp, "epochs": epochs, "imgsz": imgsz, "batch": batch, "seed": seed,
           "run_dir": str(project / "pictures"), "wall_s": wall,
           "setup_s": timer.before.get("pictures", 0.0), "epochs_s": sum(per_epoch),
           "first_epoch_s": per_epoch[0], "final_s": timer.after.get("pictures", 0.0),
           "best_mAP50-95": max(r["mAP50-95"] for r in history)}
    out["pictures_s"] = out["setup_s"] + out["epochs_s"] + out["final_s"]
    if compare:
        shutil.rmtree(project / "no-pictures", ignore_errors=True)
        _, plain_wall, plain_history = _train(data, model, hyp, TrainOptions(**base, name="no-pictures", plots=False,
                                                                          tensorboard="off"))
        out["no_pictures_wall_s"] = plain_wall
        out["same_metrics"] = [r["fitness"] for r in plain_history] == [r["fitness"] for r in history]
    return out


def format_cost(r: dict) -> str:
    def row(part: str, seconds: float) -> list[str]:
        return [part, f"{seconds:.2f}", f"{100 * seconds / r['wall_s']:.2f}"]

    rows = [row("labels.png (set-up)", r["setup_s"]),
            row("first epoch (train_batch0-2.jpg, results.png, TensorBoard)", r["first_epoch_s"]),
            row(f"the other {r['epochs'] - 1} epochs (results.png, TensorBoard scalars)",
                r["epochs_s"] - r["first_epoch_s"]),
            row("end (PR/F1 curves, confusion matrix, val batches, trackers closed)", r["final_s"]),
            row("all pictures", r["pictures_s"])]
    head = (f"{r['model']}, hyp {r['hyp']}, {r['epochs']} epochs at {r['imgsz']} px, batch {r['batch']}, seed "
            f"{r['seed']}: run {r['wall_s']:.1f} s, best mAP50-95 {r['best_mAP50-95']:.4f}; pictures in {r['run_dir']}")
    lines = [head, "", markdown_table(["pictures", "seconds", "% of the run"], rows)]
    if "no_pictures_wall_s" in r:
        lines += ["", f"Side by side, run again with --no-plots and TensorBoard off: {r['no_pictures_wall_s']:.1f} s; "
                      f"with / without = {r['wall_s'] / r['no_pictures_wall_s']:.3f} (two runs one after the other: "
                      f"the host's load may differ); same per-epoch fitness: {r['same_metrics']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.picture_cost", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="data yaml (default: the built-in dataset)")
    p.add_argument("--model", default="studies/models/yolov5-cpu.yaml")
    p.add_argument("--hyp", default="studies/hyp/adamw-short.yaml")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--project", type=Path, default=Path("runs/bench"))
    p.add_argument("--compare", action="store_true", help="also train without pictures and compare wall times")
    p.add_argument("--out", default="runs/bench/picture_cost.json")
    p.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/pictures.md")
    args = p.parse_args(argv)
    r = picture_cost(args.data, args.model, args.hyp, args.epochs, args.imgsz, args.batch_size, args.seed,
                     args.project, args.compare)
    text = format_cost(r)
    print(text)
    write_json(r, args.out)
    if not args.no_record:
        record("pictures", text, command=command_line("bench.picture_cost", argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
