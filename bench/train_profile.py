"""Where a training epoch spends its time: `python -m bench.train_profile` (part of `make bench`).

Runs the real trainer, `core.train.fit`, with a timer in its phase hook (`core.callbacks.Callbacks.around_phase`),
which the trainer enters around each phase of its own work, and reports the last epoch:
  data wait       the wait for the next batch from the loader: what the loader workers did not hide
  forward         the batch to float on the device, the model's forward in training mode
  loss            ComputeLoss (target assignment included)
  backward        the (scaled) loss's backward
  optimizer+EMA   once per optimizer step: unscale, gradient-norm clip, step, zero_grad, EMA update
  validation      core.val.validate of the EMA model, split by the validator's own clocks (`speed_ms`) into
                  pre-process, inference and loss+NMS; the rest is its data wait, matching and AP
  checkpoints     results.csv, best.pt (an improved epoch) and last.pt with the optimizer state
  other           the epoch's wall time outside those phases (lr warmup, loss sums, scheduler, logging)
Step figures are medians over the batches after `--warmup` (a batch without an optimizer step counts 0 for
that phase); epoch figures are the phase's whole time in the epoch. On CUDA the timer synchronises the
device at each phase boundary. The trainer's numbers do not change under the hooks (tests/bench).
`--no-record`: print and write the JSON only; otherwise the table is appended to bench/results/train_profile.md.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from bench.record import command_line, markdown_table, record, write_json
from core.callbacks import Callbacks
from core.data.config import load_data_config
from core.data.files import list_image_files
from core.device import parse_device_ids, resolve_bf16
from core.train import TrainOptions, fit

__all__ = ["PhaseTimer", "TRAIN_PHASES", "format_profile", "main", "profile", "train_options"]

TRAIN_PHASES = ("data", "forward", "loss", "backward", "optimizer")  # core.callbacks.PHASES of a batch
LABELS = {"data": "data wait", "forward": "forward", "loss": "loss", "backward": "backward",
          "optimizer": "optimizer+EMA"}
VAL_SPLIT = (("pre", "pre-process"), ("inference", "inference"), ("nms", "loss+NMS"))  # core.val speed_ms keys


@dataclass
class EpochTimes:
    """One epoch's clock: seconds per phase, per batch (train phases) and in all, and its wall time."""

    epoch: int
    start: float
    total: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    batches: list[dict[str, float]] = field(default_factory=list)
    optimizer_steps: int = 0
    wall: float = float("nan")
    val: dict[str, Any] = field(default_factory=dict)  # core.val.validate's speed_ms and image count


class PhaseTimer:
    """Wall time of each phase of the trainer's own work, per epoch and per batch, read through the trainer's
    hooks (`callbacks()`); it only reads clocks (and, on CUDA, synchronises), so training runs unchanged."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.epochs: list[EpochTimes] = []
        self.train_start = float("nan")
        self.in_epoch = False
        self.before: dict[str, float] = defaultdict(float)  # phases in the set-up (labels.png)
        self.after: dict[str, float] = defaultdict(float)  # after the last epoch (final curves, trackers closed)

    def callbacks(self) -> Callbacks:
        return Callbacks(on_train_start=self._train_start, on_epoch_start=self._epoch_start,
                         on_val_end=self._val_end, on_epoch_end=self._epoch_end, around_phase=self.phase)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = self._now()
        try:
            yield
        finally:
            dt = self._now() - t0
            if not self.in_epoch:
                (self.after if self.epochs else self.before)[name] += dt
                return
            ep = self.epochs[-1]
            ep.total[name] += dt
            if name == "data":  # each batch starts with its wait for the loader
                ep.batches.append({})
            if name in TRAIN_PHASES:
                ep.batches[-1][name] = ep.batches[-1].get(name, 0.0) + dt

    def count_step(self, *_: Any) -> None:
        """A torch optimizer-step post hook: the optimizer steps actually taken."""
        if self.epochs:
            self.epochs[-1].optimizer_steps += 1

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _train_start(self, model: Any) -> None:
        self.train_start = time.perf_counter()

    def _epoch_start(self, epoch: int) -> None:
        self.epochs.append(EpochTimes(epoch, self._now()))
        self.in_epoch = True

    def _val_end(self, epoch: int, val_metrics: dict) -> None:
        self.epochs[-1].val = {"speed_ms": dict(val_metrics["speed_ms"]), "images": int(val_metrics["images"])}

    def _epoch_end(self, epoch: int, metrics: dict) -> None:
        ep = self.epochs[-1]
        ep.wall = self._now() - ep.start
        self.in_epoch = False


def train_options(imgsz: int, batch: int, workers: int, threads: int, device: str = "cpu",
                  channels_last: bool = False, bf16: str | None = None, epochs: int = 1, close_mosaic: int = 0,
                  seed: int = 0, project: str | Path = "runs/bench") -> TrainOptions:
    """The trainer's options for a profile: its defaults but for these; no progress bar."""
    return TrainOptions(epochs=epochs, batch_size=batch, imgsz=imgsz, device=device, workers=workers,
                        threads=threads, channels_last=channels_last, bf16=bf16 or TrainOptions.bf16,
                        close_mosaic=close_mosaic, seed=seed, project=str(project), name="profile", exist_ok=True,
                        progress=False)


def profile(data: str | None, model_yaml: str, imgsz: int, batch: int, workers: int, batches: int,
            warmup: int, threads: int, device: str = "cpu", ckpt_dir: str | Path = "runs/bench",
            channels_last: bool = False, bf16: str | None = None, epochs: int = 1, close_mosaic: int = 0,
            seed: int = 0) -> dict:
    """Train `epochs` epochs with the trainer's phases timed; the figures of the last one (and the run's
    per-epoch history). `batches` > 0 trains on the first batches x batch images of the training set."""
    cfg = load_data_config(data)
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)  # on the disk runs/ is on, as the trainer's (not /tmp)
    with tempfile.TemporaryDirectory(dir=ckpt_dir) as tmp:
        images = list_image_files(cfg["train"])
        if batches > 0:  # a list file of the first images: the trainer's own way to train on a subset
            images = images[:batches * batch]
            (Path(tmp) / "train.txt").write_text("\n".join(images) + "\n")
            cfg = {**cfg, "train": [str(Path(tmp) / "train.txt")]}
        opts = train_options(imgsz, batch, workers, threads, device, channels_last, bf16, epochs, close_mosaic,
                             seed, tmp)
        timer = PhaseTimer(cuda=parse_device_ids(device) is not None)
        handle = register_optimizer_step_post_hook(timer.count_step)
        t0 = time.perf_counter()
        try:
            result = fit(cfg, model_yaml, None, opts, timer.callbacks())
        finally:
            handle.remove()
    return figures(timer, result.history, opts, model_yaml, len(images), warmup, timer.train_start - t0)


def figures(timer: PhaseTimer, history: list[dict], opts: TrainOptions, model_yaml: str, train_images: int,
            warmup: int, setup_s: float) -> dict:
    """The last epoch's figures from the timer and the trainer's results row."""
    ep, row = timer.epochs[-1], history[-1]
    steps = [b for b in ep.batches if "forward" in b]  # the pass's final wait (the loader's end) is no batch
    counted = steps[warmup:] or steps
    step_ms = {k: statistics.median(b.get(k, 0.0) for b in counted) * 1e3 for k in TRAIN_PHASES}
    val_s = ep.total["validation"]
    speed, val_images = ep.val.get("speed_ms", {}), ep.val.get("images", 0)
    val_split = {label: speed.get(key, 0.0) * val_images / 1e3 for key, label in VAL_SPLIT}
    val_split["data wait, matching, AP"] = val_s - sum(val_split.values())
    phases_s = sum(ep.total.values())
    on, why = resolve_bf16(opts.bf16, torch.device("cuda" if timer.cuda else "cpu"))
    return {"model": model_yaml, "channels_last": opts.channels_last, "bf16": f"{'on' if on else 'off'} ({why})",
            "imgsz": opts.imgsz, "batch": opts.batch_size, "workers": opts.workers,
            "threads": torch.get_num_threads(), "epochs": opts.epochs, "epoch": ep.epoch,
            "optimizer_steps": ep.optimizer_steps, "train_batches": len(steps), "train_images": train_images,
            "setup_s": setup_s, "step_ms": step_ms, "epoch_train_s": {k: ep.total[k] for k in TRAIN_PHASES},
            "train_s": row["train_seconds"], "train_images_per_s": train_images / row["train_seconds"],
            "val_images": val_images, "validate_s": val_s, "validate_speed_ms": speed, "val_split_s": val_split,
            "checkpoint_s": ep.total["checkpoint"], "pictures_s": ep.total.get("pictures", 0.0), "epoch_s": ep.wall, "phases_s": phases_s,
            "other_s": ep.wall - phases_s, "history": history}


def format_profile(r: dict) -> str:
    """The header line and the markdown table of phases (step medians and the epoch's seconds)."""
    step_total = sum(r["step_ms"].values())
    epoch = r["epoch_s"]
    layout = "channels_last" if r["channels_last"] else "NCHW"
    head = (f"{r['model']} ({layout}, bf16 autocast {r['bf16']}), imgsz {r['imgsz']}, batch {r['batch']}, "
            f"{r['workers']} loader workers, {r['threads']} torch threads; epoch {r['epoch'] + 1} of {r['epochs']}: "
            f"{r['train_batches']} batches, {r['optimizer_steps']} optimizer steps, "
            f"{r['train_images_per_s']:.1f} train img/s; setup {r['setup_s']:.1f} s")

    def row(name: str, seconds: float, ms: float | None = None) -> list[str]:
        step = [f"{ms:.1f}", f"{100 * ms / step_total:.1f}"] if ms is not None else ["", ""]
        return [name, *step, f"{seconds:.2f}", f"{100 * seconds / epoch:.1f}"]

    rows = [row(f"train {LABELS[k]}", r["epoch_train_s"][k], r["step_ms"][k]) for k in TRAIN_PHASES]
    rows += [row(f"val {k}", s) for k, s in r["val_split_s"].items()]
    rows += [row("checkpoints (results.csv, best, last)", r["checkpoint_s"]),
             row("pictures and trackers (results.png, TensorBoard, MLflow)", r.get("pictures_s", 0.0)),
             row("other (lr warmup, loss sums, scheduler, logging)", r["other_s"])]
    rows.append(["total", f"{step_total:.1f}", "100.0", f"{epoch:.2f}", "100.0"])
    note = (f"(val: {r['val_images']} images, {r['validate_s']:.2f} s; the trainer's own clocks: train "
            f"{r['train_s']:.2f} s of the epoch's {epoch:.2f} s)")
    return "\n".join([head, "", markdown_table(["phase", "step ms", "% step", "epoch s", "% epoch"], rows), "", note])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_profile", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="data yaml (default: the built-in dataset)")
    p.add_argument("--model", default="studies/models/yolov5n.yaml")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=0, help="train on the first N x batch images (0 = all)")
    p.add_argument("--epochs", type=int, default=1, help="epochs to train; the last one is reported")
    p.add_argument("--close-mosaic", type=int, default=0, help="the trainer's flag (0: mosaic on, as in most "
                   "epochs of a run)")
    p.add_argument("--warmup", type=int, default=3, help="batches left out of the per-step medians")
    p.add_argument("--threads", type=int, default=0, help="CPU torch threads (0 = the trainer's rule)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true", help="model and batches NHWC (the trainer's flag)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default=None, help="the trainer's flag (default: its default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/profile.json")
    p.add_argument("--results", type=Path, default=None, help="folder of the results file (default bench/results)")
    p.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/train_profile.md")
    args = p.parse_args(argv)
    r = profile(args.data, args.model, args.imgsz, args.batch_size, args.workers, args.batches, args.warmup,
                args.threads, args.device, Path(args.out).parent, args.channels_last, args.bf16, args.epochs,
                args.close_mosaic, args.seed)
    text = format_profile(r)
    print(text)
    write_json(r, args.out)
    if not args.no_record:
        record("train_profile", text, command=command_line("bench.train_profile", argv), results=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
