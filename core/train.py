"""Training: `fit(...)` as a library function and `python -m core.train` as a command."""
from __future__ import annotations

import copy
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from core.callbacks import Callbacks, StepInfo, StopTraining
from core.checkpoint import load_checkpoint, save_checkpoint, strip_checkpoint
from core.device import dist_context, select_device
from core.ema import ModelEMA, unwrap
from core.hyp import load_hyp
from core.optim import build_optimizer, lr_lambda, resolve_auto, warmup
from core.atomic import atomic_write, remove_stale_temps
from core.run_dir import next_run_dir, read_history, resolve_resume, write_results
from core.seeding import init_seeds

LOG = logging.getLogger("core.train")
__all__ = ["fit", "TrainOptions", "FitResult", "Callbacks", "StopTraining"]


@dataclass
class TrainOptions:
    epochs: int = 100
    batch_size: int = 16
    imgsz: int = 640
    device: str = "cpu"
    workers: int = 2
    cache: str | None = None           # None | 'ram' | 'disk'
    optimizer: str = "auto"            # SGD | Adam | AdamW | auto (AdamW for short runs, SGD for long: core/optim.py)
    cos_lr: bool = False
    patience: int = 100                # epochs without fitness improvement before stopping (0 = never)
    freeze: int = 0                    # freeze the first N layers
    weights: str | None = None         # checkpoint whose tensors (name and shape matching) start `model`
    seed: int = 0
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    resume: bool | str = False         # True = latest run under project, or a path to a run dir / checkpoint
    label_smoothing: float = 0.0
    nbs: int = 0                       # nominal batch: gradients accumulate up to it; 0 = 64, or the batch
                                       # (no accumulation) when optimizer auto picks AdamW
    close_mosaic: int = 10             # last N epochs without mosaic/mixup: train on whole, undistorted images
    save: bool = True                  # write last.pt / best.pt / results.csv
    fitness_weights: tuple = (0.0, 0.0, 0.1, 0.9)
    progress: bool = True
    amp: bool = True                   # mixed precision on CUDA (ignored on CPU)
    deterministic: bool = True
    threads: int = 0                   # CPU torch threads; 0 = auto: cores left over by the loader workers


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    best_fitness: float = float("-inf")
    save_dir: Path | None = None
    best_path: Path | None = None
    last_path: Path | None = None
    stop_reason: str = "completed"
    model: nn.Module | None = None


def _build_model(model: Any, nc: int, names: list[str], weights: str | None = None) -> tuple[nn.Module, dict | None, bool]:
    """Return (model, checkpoint or None, fresh) for a yaml path, arch dict, checkpoint path or Model.

    A checkpoint path builds its own architecture with the data's class count; `weights` (a checkpoint)
    starts a yaml/arch model from it. Either way every tensor whose name and shape match is copied.
    """
    from core.model.yolo import Model
    from core.transfer import transfer_weights

    ckpt = None
    if isinstance(model, nn.Module):
        net = copy.deepcopy(model).float()
        if net.nc != nc:
            raise ValueError(f"the given model predicts {net.nc} classes but the data has nc={nc}")
        fresh = False
    elif isinstance(model, (str, Path)) and str(model).endswith(".pt"):
        ckpt = load_checkpoint(model)
        net = Model(copy.deepcopy(ckpt["arch"]), nc=nc)  # the data's class count: a new Detect if it differs
        if int(ckpt["arch"]["nc"]) != nc:
            LOG.warning(f"{model}: checkpoint has nc={ckpt['arch']['nc']}, data has nc={nc}: Detect outputs built fresh")
        weights, fresh = str(model), False
    else:
        net = Model(copy.deepcopy(model) if isinstance(model, Mapping) else str(model), nc=nc)
        fresh = weights is None  # a transferred head keeps its biases and anchors
    if weights is not None:
        source = ckpt if ckpt is not None else load_checkpoint(weights)
        copied, total = transfer_weights(net, source["ema"] or source["state_dict"])
        LOG.info(f"Transferred {copied}/{total} items from {weights}")
    net.names = list(names)
    return net, ckpt, fresh


def _cpu_threads(requested: int, workers: int) -> int:
    """Torch threads for CPU training. Auto leaves the loader workers their cores: OpenMP threads that
    spin-wait for a busy core make a step several times slower than fewer threads would."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - workers))  # never more than the caller set


def _fit_anchors(net: nn.Module, labels: list[np.ndarray], imgsz: int, hyp: dict) -> None:
    """When hyp['anchors'] asks for a different number of anchors per level, re-fit them by k-means."""
    from core.model.anchors import kmean_anchors, set_anchors

    det = net.model[-1]
    na = int(round(hyp["anchors"]))
    if na == det.na:
        return
    wh = np.concatenate([lb[:, 3:5] for lb in labels if len(lb)], 0) * imgsz if labels else np.zeros((0, 2))
    if len(wh) < det.nl * na:
        LOG.warning(f"hyp anchors={na}: too few labels to fit anchors, keeping {det.na}")
        return
    set_anchors(net, kmean_anchors(wh, det.nl * na, imgsz=imgsz, thr=hyp["anchor_t"]))


class _TermAsInterrupt:
    """Inside the block SIGTERM raises KeyboardInterrupt, so a killed run cleans up like Ctrl-C."""

    def __enter__(self):
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not in the main thread: leave signals alone
            pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def fit(data: str | Mapping | None, model: Any, hyp: str | Mapping | None = None,
        opts: TrainOptions | None = None, callbacks: Callbacks | None = None) -> FitResult:
    """Train `model` on `data` with `hyp`; validate every epoch; return per-epoch metrics.

    data: data yaml path, a loaded data config dict, or None for the built-in dataset.
    model: model yaml path, architecture dict, checkpoint path (.pt) or a Model instance.
    """
    from core.data.config import load_data_config
    from core.data.labels import require_boxes
    from core.data.loader import create_dataloader
    from core.loss import ComputeLoss
    from core.metrics import fitness as weighted_fitness
    from core.val import validate

    opts = copy.deepcopy(opts) if opts is not None else TrainOptions()
    callbacks = callbacks or Callbacks()
    ctx = dist_context()
    resume_ckpt = None
    if opts.resume:
        resume_path = resolve_resume(opts.resume, opts.project)
        resume_ckpt = load_checkpoint(resume_path)
        if resume_ckpt.get("optimizer") is None:
            raise ValueError(f"--resume: {resume_path} has no optimizer state (it was stripped); start a new run with --weights")
        saved = resume_ckpt.get("train_opts", {})
        for f_ in fields(TrainOptions):
            if f_.name in saved and f_.name not in ("resume", "device", "workers", "progress"):
                setattr(opts, f_.name, tuple(saved[f_.name]) if f_.name == "fitness_weights" else saved[f_.name])
        opts.exist_ok = True
        data = saved.get("data", data)
        hyp = resume_ckpt["hyp"]
        model = resume_path
        LOG.info(f"resuming from {resume_path} at epoch {resume_ckpt['epoch'] + 1}")

    init_seeds(opts.seed + 1 + max(ctx.rank, 0), opts.deterministic)
    device = select_device(opts.device, opts.batch_size, ctx)
    if device.type == "cpu":
        torch.set_num_threads(_cpu_threads(opts.threads, opts.workers))
    if ctx.distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    hyp = load_hyp(hyp)
    data_cfg = data if isinstance(data, Mapping) else load_data_config(data)
    nc, names = int(data_cfg["nc"]), list(data_cfg["names"])

    save_dir = Path(resume_path).parent if resume_ckpt else next_run_dir(opts.project, opts.name, opts.exist_ok)
    if resume_ckpt:
        remove_stale_temps(save_dir)  # of writes cut short by a kill
    if opts.save and ctx.is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
        if resume_ckpt is None and (save_dir / "results.csv").exists():
            (save_dir / "results.csv").unlink()  # a new run in a reused folder (--exist-ok) starts a new table
        import yaml
        atomic_write(save_dir / "hyp.yaml", yaml.safe_dump(hyp, sort_keys=False))
        atomic_write(save_dir / "opt.yaml", yaml.safe_dump(
            {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(opts).items()},
             "data": data_cfg.get("yaml_file")}, sort_keys=False))

    net, ckpt, fresh = _build_model(model, nc, names, opts.weights)
    gs = max(int(net.stride.max()), 32)
    if opts.imgsz % gs:
        raise ValueError(f"--imgsz {opts.imgsz} must be a multiple of the max stride {gs}")

    batch = opts.batch_size // ctx.world_size
    close_epoch = opts.epochs - opts.close_mosaic if opts.close_mosaic > 0 else opts.epochs

    def train_loader_for(epoch: int, prefix: str = "train: "):
        """The training loader; from close_epoch on without mosaic/mixup/copy-paste (new workers see the
        new hyp; the RAM cache is process-wide, so nothing is decoded again)."""
        epoch_hyp = hyp if epoch < close_epoch else {**hyp, "mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0}
        return create_dataloader(
            data_cfg["train"], opts.imgsz, batch, epoch_hyp, augment=True, cache=opts.cache, workers=opts.workers,
            shuffle=True, rank=ctx.rank, world_size=ctx.world_size, seed=opts.seed + (epoch >= close_epoch),
            nc=nc, prefix=prefix)

    train_loader, train_set = train_loader_for(0)
    require_boxes(train_set, data_cfg["train"])  # YOLOv5 stops too: background only trains nothing
    mosaic_closed = close_epoch <= 0
    val_loader = None
    if ctx.is_main:
        val_loader, _ = create_dataloader(
            data_cfg["val"], opts.imgsz, batch * 2, hyp, augment=False, cache=opts.cache, workers=opts.workers,
            shuffle=False, rank=-1, world_size=1, seed=opts.seed, nc=nc, prefix="val: ")

    if fresh:
        _fit_anchors(net, train_set.labels, opts.imgsz, hyp)
        counts = np.bincount(np.concatenate([lb[:, 0].astype(int) for lb in train_set.labels if len(lb)] or [np.zeros(0, int)]),
                             minlength=nc)[:nc].astype(float)
        net.initialize_biases(counts + 1.0)  # +1: a class absent from train still gets a finite prior
    net = net.to(device)
    for name, p in net.named_parameters():
        p.requires_grad_(True)
        if opts.freeze and any(name.startswith(f"model.{i}.") for i in range(opts.freeze)):
            p.requires_grad_(False)

    nl = net.model[-1].nl
    loss_hyp = dict(hyp)  # gains scale with layers, classes and image size; the checkpoint keeps the user's hyp
    loss_hyp["box"] *= 3 / nl
    loss_hyp["cls"] *= nc / 80 * 3 / nl
    loss_hyp["obj"] *= (opts.imgsz / 640) ** 2 * 3 / nl
    compute_loss = ComputeLoss(net, loss_hyp, label_smoothing=opts.label_smoothing)

    auto = opts.optimizer.lower() == "auto"
    # nominal batch: as given; else no accumulation under auto's AdamW (4x the steps of a short run), else 64
    nbs = opts.nbs or opts.batch_size
    optimizer_steps = math.ceil(len(train_set) / max(opts.batch_size, nbs)) * opts.epochs
    optimizer_name, hyp_run = resolve_auto(opts.optimizer, hyp, nc, optimizer_steps)
    if not opts.nbs and not (auto and optimizer_name == "AdamW"):
        nbs = 64
    accumulate = max(round(nbs / opts.batch_size), 1)
    decay = hyp["weight_decay"] * opts.batch_size * accumulate / nbs
    if auto and ctx.is_main:
        LOG.info(f"optimizer auto: {optimizer_name} lr0={hyp_run['lr0']} momentum={hyp_run['momentum']} nbs={nbs}, "
                 f"{math.ceil(len(train_set) / max(opts.batch_size, nbs)) * opts.epochs} optimizer steps "
                 f"(--optimizer SGD: YOLOv5's recipe with the hyp's lr0 {hyp['lr0']})")
    optimizer = build_optimizer(net, optimizer_name, hyp_run["lr0"], hyp_run["momentum"], decay)
    lf = lr_lambda(opts.epochs, hyp["lrf"], opts.cos_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(net) if ctx.is_main else None

    start_epoch, best_fitness, history = 0, float("-inf"), []
    if resume_ckpt is not None:
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        if ema is not None and resume_ckpt.get("ema"):
            ema.ema.load_state_dict({k: v.float() for k, v in resume_ckpt["ema"].items()})
            ema.updates = resume_ckpt["updates"]
        net.load_state_dict({k: v.float() if v.dtype.is_floating_point else v for k, v in resume_ckpt["state_dict"].items()})
        start_epoch = resume_ckpt["epoch"] + 1
        best_fitness = resume_ckpt.get("best_fitness") or float("-inf")
        # rows past the checkpoint (an interrupt between the csv row and the checkpoint) are re-run
        history = [h for h in read_history(save_dir / "results.csv") if h["epoch"] < start_epoch]
        write_results(save_dir / "results.csv", history)
        scheduler.last_epoch = start_epoch - 1  # the next scheduler.step() sets the lr of start_epoch

    train_model: nn.Module = net
    if ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    amp = bool(opts.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    nb = len(train_loader)
    nw = round(hyp["warmup_epochs"] * nb)  # exact: a small data set still gets the warmup it asks for
    last_opt_step = -1
    result = FitResult(save_dir=save_dir if opts.save else None, history=history)
    last_path, best_path = save_dir / "last.pt", save_dir / "best.pt"
    best_epoch, stop_reason = -1, "completed"
    for row in history:
        if row.get("fitness", float("-inf")) >= best_fitness:
            best_epoch, result.best = int(row["epoch"]), row
    opts_record = {**asdict(opts), "data": data_cfg.get("yaml_file")}
    callbacks.call("on_train_start", net)
    t_start = time.time()
    interrupted, ended = False, False
    try:
        with _TermAsInterrupt():
            for epoch in range(start_epoch, opts.epochs):
                callbacks.call("on_epoch_start", epoch)
                if epoch >= close_epoch and not mosaic_closed:
                    mosaic_closed = True
                    if ctx.is_main:
                        LOG.info(f"epoch {epoch}: mosaic and mixup off for the last {opts.epochs - epoch} epochs "
                                 f"(--close-mosaic {opts.close_mosaic})")
                    train_loader, _ = train_loader_for(epoch, prefix="")
                t_epoch = time.time()
                train_model.train()
                if hasattr(train_loader.sampler, "set_epoch"):
                    train_loader.sampler.set_epoch(epoch)
                mloss = torch.zeros(3, device=device)
                optimizer.zero_grad()
                batches = enumerate(train_loader)
                if ctx.is_main and opts.progress:
                    from tqdm import tqdm
                    batches = tqdm(batches, total=nb, desc=f"epoch {epoch + 1}/{opts.epochs}", leave=False,
                                   bar_format="{l_bar}{bar:20}{r_bar}")
                for i, (imgs, targets, _, _) in batches:
                    ni = i + nb * epoch
                    imgs = imgs.to(device, non_blocking=True).float() / 255
                    if nw and ni <= nw:
                        accumulate = warmup(optimizer, ni, nw, epoch, hyp_run, lf, nbs, opts.batch_size)
                    with torch.autocast(device_type=device.type, enabled=amp):
                        pred = train_model(imgs)
                        loss, loss_items = compute_loss(pred, targets.to(device))
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"training loss is {loss.item()} at epoch {epoch}, batch {i} "
                                                 f"(box/obj/cls = {loss_items.tolist()}); lr0={hyp['lr0']}")
                    if ctx.distributed:
                        loss = loss * ctx.world_size  # DDP averages gradients across processes
                    scaler.scale(loss).backward()
                    if ni - last_opt_step >= accumulate:
                        scaler.unscale_(optimizer)  # hooks and clipping see true gradients
                        callbacks.call("after_backward", unwrap(train_model))
                        norm = nn.utils.clip_grad_norm_(net.parameters(), max_norm=10.0)
                        if callbacks.after_clip is not None:
                            clip = min(1.0, 10.0 / (float(norm) + 1e-6))  # clip_grad_norm_'s own factor
                            callbacks.call("after_clip", unwrap(train_model),
                                           StepInfo(clip, opts.batch_size * accumulate, ema.ema if ema is not None else None))
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad()
                        if ema is not None:
                            ema.update(net)
                        last_opt_step = ni
                    mloss = (mloss * i + loss_items) / (i + 1)
                    if ctx.is_main and opts.progress:
                        batches.set_postfix(box=f"{mloss[0]:.4f}", obj=f"{mloss[1]:.4f}", cls=f"{mloss[2]:.4f}")
                lr = optimizer.param_groups[1]["lr"]
                scheduler.step()
                t_train = time.time() - t_epoch

                stop_now = False
                if ctx.is_main:
                    t_val = time.time()
                    vm = validate(ema.ema, val_loader, compute_loss=compute_loss, names=names,
                                  half=amp, progress=False)
                    metrics = {"epoch": epoch, "train_box": float(mloss[0]), "train_obj": float(mloss[1]),
                               "train_cls": float(mloss[2]), "P": vm["P"], "R": vm["R"], "mAP50": vm["mAP50"],
                               "mAP50-95": vm["mAP50-95"],
                               "fitness": float(weighted_fitness(vm, opts.fitness_weights)),
                               "val_box": vm["val_box"], "val_obj": vm["val_obj"], "val_cls": vm["val_cls"],
                               "lr": lr, "train_seconds": t_train, "val_seconds": time.time() - t_val}
                    metrics["seconds"] = time.time() - t_epoch
                    history.append(metrics)
                    improved = metrics["fitness"] > best_fitness
                    if improved:
                        best_fitness, best_epoch, result.best = metrics["fitness"], epoch, metrics
                    if opts.save:  # every file atomic; last.pt stays full (resumable) until the run ends
                        write_results(save_dir / "results.csv", history)
                        common = dict(ema=ema.ema, updates=ema.updates, hyp=hyp, metrics=metrics, epoch=epoch,
                                      best_fitness=best_fitness, train_opts=opts_record)
                        if improved:  # best first: whenever last.pt has epoch N, best.pt covers epochs <= N
                            save_checkpoint(best_path, net, **common)
                        save_checkpoint(last_path, net, optimizer=optimizer, **common)
                        (save_dir / "resume.pt").unlink(missing_ok=True)  # last.pt now holds a newer full state
                    LOG.info(f"epoch {epoch}: mAP50 {metrics['mAP50']:.4f} mAP50-95 {metrics['mAP50-95']:.4f} "
                             f"fitness {metrics['fitness']:.4f} ({metrics['seconds']:.1f}s)")
                    if opts.patience and epoch - best_epoch >= opts.patience:
                        stop_reason, stop_now = "early_stop", True
                    try:
                        callbacks.call("on_epoch_end", epoch, metrics)
                    except StopTraining as e:
                        stop_reason, stop_now = f"callback: {e.reason}", True
                if ctx.distributed:  # every rank must leave the loop together
                    flag = [stop_now]
                    torch.distributed.broadcast_object_list(flag, 0)
                    stop_now = flag[0]
                if stop_now:
                    break
        ended = True
    except KeyboardInterrupt:
        interrupted, stop_reason = True, "interrupted"
        LOG.warning("training interrupted: stripping checkpoints (full state kept in resume.pt)")
        raise
    finally:
        # stripped files only at a normal end or on a signal; after a crash last.pt keeps the full state
        if opts.save and ctx.is_main and (ended or interrupted):
            if interrupted and last_path.exists():
                atomic_write(save_dir / "resume.pt", last_path.read_bytes())
            for path in (best_path, last_path):  # last.pt last: killed in between, it still resumes
                if path.exists():
                    strip_checkpoint(path)
            if ended:
                (save_dir / "resume.pt").unlink(missing_ok=True)  # a finished run has nothing left to resume
        elif opts.save and ctx.is_main and last_path.exists():
            LOG.error(f"training failed: {last_path} keeps the full state of the last finished epoch; "
                      f"--resume {save_dir} continues from it")
        if ctx.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    result.history = history
    result.best_fitness = best_fitness
    result.stop_reason = stop_reason
    result.best_path = best_path if opts.save and best_path.exists() else None
    result.last_path = last_path if opts.save and last_path.exists() else None
    if ema is not None:
        result.model = ema.ema.float().eval()
    callbacks.call("on_train_end", result)
    if ctx.is_main and opts.progress:
        hours = (time.time() - t_start) / 3600
        where = f" Results saved to {save_dir}/ (results.csv, best.pt, last.pt)" if opts.save else ""
        print(f"{len(history) - (start_epoch if resume_ckpt else 0)} epochs in {hours:.3f} h, stop: {stop_reason}; "
              f"best fitness {best_fitness:.4f} at epoch {best_epoch}.{where}")
    return result


if __name__ == "__main__":
    from core.train_cli import main

    raise SystemExit(main())
