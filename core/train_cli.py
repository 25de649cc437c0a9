"""`python -m core.train`: the command line over core.train.fit."""
from __future__ import annotations

import argparse

from core import argtypes as t
from core.cli import main_guard
from core.device import BF16_MODES, dist_context
from core.train import DEFAULT_MODEL, FitResult, TrainOptions, fit
from core.trackers import TRACKER_MODES



def parse_args(argv: list[str] | None = None):
    d = TrainOptions()
    p = argparse.ArgumentParser(prog="python -m core.train", description="Train a YOLOv5-style detector.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=t.existing_file, default=None, help="data yaml (default: the built-in synthetic shapes dataset)")
    p.add_argument("--model", default=None, help=f"model yaml (default: {DEFAULT_MODEL}, or the "
                   "checkpoint's own architecture with --weights)")
    p.add_argument("--weights", type=t.existing_file, default=None, help="start from this checkpoint: every tensor "
                   "whose name and shape match is copied (into --model when given)")
    p.add_argument("--hyp", type=t.existing_file, default=None, help="hyp yaml (a subset of keys is fine; default studies/hyp/scratch.yaml)")
    p.add_argument("--epochs", type=t.positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=t.positive_int, default=d.batch_size, help="total batch over all devices")
    p.add_argument("--imgsz", type=t.positive_int, default=d.imgsz, help="train/val image size (pixels)")
    p.add_argument("--device", type=t.device, default=d.device, help="cpu, 0 or 0,1,2,3 (several GPUs: launch with torchrun)")
    p.add_argument("--workers", type=t.non_negative_int, default=d.workers, help="dataloader workers per process")
    p.add_argument("--cache", choices=["ram", "disk"], default=None, help="cache decoded images")
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW", "auto"], default=d.optimizer,
                   help="auto: AdamW (lr0 min(0.004, 0.04/(4+nc)), no accumulation) for runs up to 10k optimizer steps, else SGD with the hyp lr0")
    p.add_argument("--cos-lr", action="store_true", help="cosine instead of linear lr decay")
    p.add_argument("--patience", type=t.non_negative_int, default=d.patience, help="early-stop after N epochs without improvement (0=off)")
    p.add_argument("--freeze", type=t.non_negative_int, default=0, help="freeze the first N layers")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=t.non_negative_int, default=0, help="CPU torch threads (0 = auto: every core with the loader workers niced while the CPU is otherwise idle, re-decided each epoch; else the cores the workers leave)")
    p.add_argument("--label-smoothing", type=t.fraction, default=0.0)
    p.add_argument("--nbs", type=t.non_negative_int, default=d.nbs, help="nominal batch: gradients accumulate up to it "
                   "(0 = 64 as YOLOv5, or the batch size when --optimizer auto picks AdamW)")
    p.add_argument("--close-mosaic", type=t.non_negative_int, default=d.close_mosaic,
                   help="turn mosaic and mixup off for the last N epochs (0 = never)")
    p.add_argument("--sync-bn", action="store_true", help="DDP on GPUs: SyncBatchNorm (BN statistics over all GPUs)")
    p.add_argument("--noautoanchor", action="store_true", help="do not check (and, for a model trained from "
                   "scratch, refit) the anchors against the labels before training")
    p.add_argument("--no-automosaic", action="store_true", help="train with the hyp's mosaic probability as it "
                   "is (default: lowered where mosaics cut the dataset's objects to fragments: README)")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--channels-last", dest="channels_last", action="store_true", default=d.channels_last,
                        help="train in the channels_last (NHWC) memory format: ~1.2x faster on CPU, but its CPU "
                        "BatchNorm is less precise and cost mAP in a seeded comparison (README); checkpoints are "
                        "NCHW either way")
    layout.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="the standard NCHW memory format (the default)")
    p.add_argument("--bf16", choices=BF16_MODES, default=d.bf16,
                   help="CPU: run the network in bfloat16 autocast (loss, optimizer, weights fp32); auto = on where "
                   "the CPU computes bf16 in hardware (AMX, AVX512-BF16), where it was ~1.5x faster per step")
    p.add_argument("--compile", action="store_true", help="torch.compile the training model (inductor): ~1.25x "
                   "faster CPU steps once compiled; the first run compiles for about a minute on 2 cores, later "
                   "runs of the same model and shapes reuse inductor's on-disk cache (README, Speed levers)")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume the latest (or given) interrupted run")
    p.add_argument("--project", default=d.project)
    p.add_argument("--name", default=d.name)
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--tensorboard", choices=TRACKER_MODES, default=d.tensorboard, help="TensorBoard events in the "
                   "run folder (scalars, pictures, hyps): auto = when the tensorboard package is installed")
    p.add_argument("--mlflow", default=None, metavar="URI", help="log the run to MLflow at this tracking URI "
                   "(sqlite:///mlflow.db, http://host:5000): params, metrics per epoch, pictures (the mlflow extra)")
    p.add_argument("--no-plots", action="store_true", help="no pictures in the run folder (labels.png, "
                   "train/val batches, results.png, PR/F1 curves, confusion matrix)")
    return p.parse_args(argv)


@main_guard("core.train", interrupted="interrupted: best.pt and last.pt are stripped and loadable; "
            "`--resume` continues from resume.pt")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, imgsz=args.imgsz, device=args.device,
                        workers=args.workers, cache=args.cache, optimizer=args.optimizer, cos_lr=args.cos_lr,
                        patience=args.patience, freeze=args.freeze, seed=args.seed, project=args.project,
                        name=args.name, exist_ok=args.exist_ok, resume=args.resume,
                        label_smoothing=args.label_smoothing, progress=not args.no_progress,
                        threads=args.threads, nbs=args.nbs, close_mosaic=args.close_mosaic, sync_bn=args.sync_bn,
                        weights=args.weights if args.model else None, autoanchor=not args.noautoanchor,
                        automosaic=not args.no_automosaic, plots=not args.no_plots,
                        tensorboard=args.tensorboard, mlflow=args.mlflow,
                        channels_last=args.channels_last, bf16=args.bf16, compile=args.compile)
    result = fit(args.data, args.model or args.weights or DEFAULT_MODEL, args.hyp, opts)
    # a run resumed after its end trained nothing: fit has said so
    if opts.progress and dist_context().is_main and result.stop_reason != "already finished":
        print(summary(result))
    return 0


def summary(result: FitResult) -> str:
    """The command's last line: epochs trained, time, why it stopped, the best epoch, where the files are."""
    where = f" Results saved to {result.save_dir}/ (results.csv, best.pt, last.pt)" if result.save_dir else ""
    return (f"{len(result.history) - result.start_epoch} epochs in {result.seconds / 3600:.3f} h, "
            f"stop: {result.stop_reason}; best fitness {result.best_fitness:.4f} at epoch "
            f"{int(result.best.get('epoch', -1))}.{where}")


if __name__ == "__main__":
    raise SystemExit(main())
