"""Training: `fit(...)` as a library function; `python -m core.train` is its command (core/train_cli.py).

Read it top to bottom:
- `fit` runs one training: `setup`, then `run_epoch` until the last epoch, patience, a callback or a signal
  ends it, then the run's `FitResult`.
- `setup` turns the options into what the epochs share, in three parts: `RunSettings` (decided once, read
  only), the objects that do the work (`TrainState`: model, EMA, optimizer, scheduler, loaders, loss, run
  files) and the `Counters` that training advances. Each of its steps is one function, in the order it
  calls them (the order is part of a seeded run's numbers).
- the per-epoch code: `run_epoch`, `train_one_epoch` (one optimizer step per `accumulate` batches),
  `validate_epoch`.
- helpers.

Timing hooks: the trainer runs each phase of its own work (core.callbacks.PHASES: data, forward, loss,
backward, optimizer, validation, checkpoint) inside `callbacks.phase(name)`, a shared no-op unless
`Callbacks.around_phase` is set; `python -m bench.train_profile` times training that way.
"""
from __future__ import annotations

import copy
import logging
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

# Called through their modules, not imported names, so that a test replacing create_dataloader,
# ComputeLoss or validate there reaches the trainer.
import core.data.loader
import core.loss
import core.loss_af
import core.val
from core.callbacks import Callbacks, StepInfo, StopTraining
from core.checkpoint import load_checkpoint
from core.checkpoint_saver import CheckpointSaver
from core.cpu import AdaptiveThreads, ThreadPlan, training_threads, workers_yield
from core.data.automosaic import apply_automosaic
from core.data.config import load_data_config
from core.data.labels import require_boxes
from core.device import (DeviceError, DistContext, compile_for_training, dist_context, resolve_bf16, select_device,
                         train_forward)
from core.ema import ModelEMA, unwrap
from core.hyp import load_hyp
from core.metrics import fitness as weighted_fitness
from core.model.anchors import check_anchors, fit_anchor_count
from core.model.yolo import Model, is_anchor_free
from core.nonfinite import NonFiniteGuard
from core.optim import OptimizerPlan, build_optimizer, lr_lambda, plan_optimizer, warmup
from core.plots import RunPlots
from core.trackers import MLflowTracker, TensorBoardTracker, tensorboard_tracker
from core.run_dir import next_run_dir, read_history, resolve_resume
from core.seeding import init_seeds, rng_state, set_rng_state
from core.transfer import transfer_weights

LOGGER = logging.getLogger(__name__)
__all__ = ["fit", "TrainOptions", "FitResult", "Callbacks", "StopTraining", "DEFAULT_MODEL"]

# The model a command trains without --model: the anchor-free head, ahead of the anchor head on the built-in set and
# every held-out set (bench/results/default_model.md)
DEFAULT_MODEL = "studies/models/yolov5-cpu-af.yaml"


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
    bf16: str = "off"                  # CPU: the network in bfloat16 autocast (auto = where the CPU has it in
                                       # hardware, AMX / AVX512-BF16; on; off); loss, optimizer and weights fp32
    sync_bn: bool = False              # DDP on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    deterministic: bool = True
    threads: int = 0                   # CPU torch threads; 0 = auto: cores left over by the loader workers
    channels_last: bool = False        # model and batches NHWC: ~1.2x faster on CPU, but less accurate there (README)
    compile: bool = False              # torch.compile the training model: faster steps after a compile that takes
                                       # ~1 min on a 2-core CPU the first time (inductor caches it on disk) (README)
    autoanchor: bool = True            # check anchors against the labels before training; refit a fresh head's
                                       # anchors when they fit badly (core/model/anchors.py)
    automosaic: bool = True            # lower the hyp's mosaic probability where mosaics cut the dataset's objects
                                       # to fragments (core/data/automosaic.py)
    plots: bool = True                 # pictures in the run folder (with `save`, rank 0): labels, batches,
                                       # results.png each epoch, curves and confusion matrix at the end (core/plots.py)
    tensorboard: str = "auto"          # TensorBoard events in the run folder: auto (when installed) | on | off
                                       # (scalars per epoch, the pictures, hyps as hparams: core/trackers.py)
    mlflow: str | None = None          # MLflow tracking URI (sqlite:///mlflow.db, http://host:5000): one run per
                                       # training, params, metrics per epoch, pictures as artifacts (core/trackers.py)


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
    start_epoch: int = 0               # the first epoch this call trained (> 0 for a resumed run)
    seconds: float = 0.0               # wall time of this call's epochs (setup not included)


@dataclass(frozen=True)
class RunSettings:
    """What `setup` decides once from the options, the hyp and the data; the epochs only read it."""

    opts: TrainOptions             # as given, or as saved by the run being resumed
    hyp: dict                      # the user's hyp, as saved in checkpoints
    plan: OptimizerPlan            # optimizer, nominal batch, accumulation (plan.hyp drives the optimizer)
    ctx: DistContext
    device: torch.device
    amp: bool                      # CUDA: model and loss under fp16 autocast
    bf16: bool                     # CPU bfloat16 autocast of the network (training and validation)
    lf: Callable[[int], float]     # lr multiplier per epoch
    batches: int                   # per epoch
    warmup_iters: int
    close_epoch: int               # first epoch without mosaic/mixup/copy-paste


@dataclass
class Counters:
    """What training advances, per batch and optimizer step and per epoch (a resume restores the epoch part)."""

    accumulate: int = 1            # batches per optimizer step now (ramps up during warmup)
    last_opt_step: int = -1        # batch index (since the start) of the last optimizer step
    opt_steps: int = 0             # optimizer steps decided in this run (taken or skipped)
    scaler_skips: int = 0          # steps GradScaler skipped for inf/NaN gradients of a finite loss (AMP)
    amp_scale: float = 0.0         # GradScaler's scale after the last step: a lower one means it skipped
    start_epoch: int = 0
    mosaic_closed: bool = False    # the training set has turned mosaic, mixup and copy-paste off
    history: list[dict] = field(default_factory=list)
    best_fitness: float = float("-inf")
    best_epoch: int = -1
    best: dict = field(default_factory=dict)


@dataclass
class TrainState:
    """One run as `setup` builds it: its settings, the objects that do the work, and its counters."""

    cfg: RunSettings
    counters: Counters
    callbacks: Callbacks
    net: nn.Module                 # the bare model
    train_model: nn.Module         # net, or its DDP and / or torch.compile wrappers
    ema: ModelEMA | None           # rank 0 only: validated and saved
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    compute_loss: Callable
    train_loader: Any
    val_loader: Any                # rank 0 only
    saver: CheckpointSaver
    guard: NonFiniteGuard          # skips steps with a non-finite loss, fails the run when they persist
    threads: AdaptiveThreads | None  # CPU auto threads: every core, or fewer while other processes load the CPU
    plots: RunPlots | None = None  # the run folder's pictures (opts.plots, rank 0)
    tracker: TensorBoardTracker | None = None  # TensorBoard (opts.tensorboard, rank 0)
    mlflow: MLflowTracker | None = None  # MLflow (opts.mlflow, rank 0)


# ---------------------------------------------------------------------------------------------------------
# fit

def fit(data: str | Mapping | None, model: Any, hyp: str | Mapping | None = None,
        opts: TrainOptions | None = None, callbacks: Callbacks | None = None) -> FitResult:
    """Train `model` on `data` with `hyp`; validate every epoch; return per-epoch metrics.

    data: data yaml path, a loaded data config dict, or None for the built-in dataset.
    model: model yaml path, architecture dict, checkpoint path (.pt) or a Model instance.
    """
    opts = opts if opts is not None else TrainOptions()
    if opts.resume and (finished := _finished_run(opts)) is not None:
        return finished
    s = setup(data, model, hyp, opts, callbacks or Callbacks())
    n = s.counters
    s.callbacks.call("on_train_start", s.net)
    t_start = time.time()
    stop_reason, ended = "completed", False
    with _Interrupts() as signals:
        try:
            for epoch in range(n.start_epoch, s.cfg.opts.epochs):
                if stop := run_epoch(s, epoch):
                    stop_reason = stop
                    break
            ended = True
        except BaseException as e:
            if signals.received is None:
                raise  # a crash: last.pt keeps the full state (finish says so)
            stop_reason = "interrupted"
            LOGGER.warning("training interrupted: stripping checkpoints (full state kept in resume.pt)")
            if not isinstance(e, KeyboardInterrupt):
                raise KeyboardInterrupt(f"signal {signals.received}") from e
            raise
        finally:
            s.saver.finish(ended, interrupted=signals.received is not None and not ended)
            if s.cfg.ctx.distributed and torch.distributed.is_initialized():
                if ended:  # every rank past its last collective before any tears down its gloo pairs: a rank
                    torch.distributed.barrier()  # destroying early aborted its peer once (terminate, SIGABRT)
                torch.distributed.destroy_process_group()

    with s.callbacks.phase("pictures"):
        _final_pictures_and_trackers(s, n)
    saved = s.cfg.opts.save
    result = FitResult(
        history=n.history, best=n.best, best_fitness=n.best_fitness, stop_reason=stop_reason,
        save_dir=s.saver.save_dir if saved else None,
        best_path=s.saver.best_path if saved and s.saver.best_path.exists() else None,
        last_path=s.saver.last_path if saved and s.saver.last_path.exists() else None,
        model=s.ema.ema.float().eval().to(memory_format=torch.contiguous_format) if s.ema is not None else None,
        start_epoch=n.start_epoch, seconds=time.time() - t_start)
    s.callbacks.call("on_train_end", result)
    return result


# ---------------------------------------------------------------------------------------------------------
# setup: one function per step, in the order below

def setup(data: str | Mapping | None, model: Any, hyp: str | Mapping | None, opts: TrainOptions,
          callbacks: Callbacks) -> TrainState:
    """Resolve options, devices, data, model, loss, optimizer and run folder into one TrainState."""
    opts = copy.deepcopy(opts)
    resume_ckpt = resume_path = None
    if opts.resume:  # the interrupted run's options, data, hyp and checkpoint win
        resume_ckpt, resume_path, saved_data, hyp = _resume_inputs(opts)
        data, model = saved_data or data, resume_path
    ctx, device, threads = _start_process(opts)
    hyp = load_hyp(hyp)
    data_cfg = data if isinstance(data, Mapping) else load_data_config(data)
    saver = _run_folder(opts, ctx, hyp, data_cfg, resume_path)
    net, fresh = _model(model, data_cfg, opts)
    saved_mosaic = (resume_ckpt.get("train_state") or {}).get("mosaic") if resume_ckpt is not None else None
    train_loader, train_set, val_loader = _loaders(opts, data_cfg, hyp, ctx, device, threads, saved_mosaic)
    with callbacks.phase("pictures"):
        plots = _plots(opts, ctx, saver, data_cfg, train_set)  # labels.png
    tracker = tensorboard_tracker(opts.tensorboard, saver.save_dir, hyp) if saver.enabled else None
    mlflow = MLflowTracker(opts.mlflow, saver.save_dir, hyp, asdict(opts)) if opts.mlflow and saver.enabled else None
    _fit_anchors(net, train_set, hyp, opts, fresh, resumed=resume_ckpt is not None)
    if fresh:
        _class_priors(net, train_set.labels, int(data_cfg["nc"]))
    net = _place(net, device, opts)
    compute_loss = _loss(net, hyp, int(data_cfg["nc"]), opts)
    plan, optimizer, lf, scheduler, ema = _optimizer(net, hyp, int(data_cfg["nc"]), len(train_set), opts, ctx)
    amp, bf16 = _precision(opts, device, ctx)

    batches = len(train_loader)
    cfg = RunSettings(opts=opts, hyp=hyp, plan=plan, ctx=ctx, device=device, amp=amp, bf16=bf16, lf=lf,
                      batches=batches,
                      warmup_iters=round(hyp["warmup_epochs"] * batches),  # exact: a small data set gets its warmup
                      close_epoch=opts.epochs - opts.close_mosaic if opts.close_mosaic > 0 else opts.epochs)
    s = TrainState(
        cfg=cfg, counters=Counters(accumulate=plan.accumulate), callbacks=callbacks, net=net, train_model=net,
        ema=ema, optimizer=optimizer, scheduler=scheduler, scaler=torch.amp.GradScaler("cuda", enabled=amp),
        compute_loss=compute_loss, train_loader=train_loader, val_loader=val_loader, saver=saver,
        guard=NonFiniteGuard(device, ctx.distributed),
        threads=AdaptiveThreads(*threads.between) if threads is not None and threads.between else None, plots=plots,
        tracker=tracker, mlflow=mlflow)
    if resume_ckpt is not None:
        _restore(s, resume_ckpt)
    s.counters.amp_scale = s.scaler.get_scale()  # the initial scale (no sync: the scale tensor does not exist yet)
    s.train_model = _wrap(net, opts, ctx, device)
    return s


def _resume_inputs(opts: TrainOptions) -> tuple[dict, Path, Any, Any]:
    """For `opts.resume`: (checkpoint, its path, data, hyp) of the run to continue; its saved options are
    copied into `opts` (all but resume, device, workers and progress)."""
    path = resolve_resume(opts.resume, opts.project)
    ckpt = load_checkpoint(path)
    if ckpt.get("optimizer") is None:
        raise ValueError(f"resume: {path} has no optimizer state (it was stripped); start a new run from it "
                         f"as weights instead (--weights)")
    saved = ckpt.get("train_opts", {})
    for f_ in fields(TrainOptions):
        if f_.name in saved and f_.name not in ("resume", "device", "workers", "progress"):
            setattr(opts, f_.name, tuple(saved[f_.name]) if f_.name == "fitness_weights" else saved[f_.name])
    opts.exist_ok = True
    LOGGER.info(f"resuming from {path} at epoch {ckpt['epoch'] + 1}")
    return ckpt, path, saved.get("data"), ckpt["hyp"]


def _start_process(opts: TrainOptions) -> tuple[DistContext, torch.device, ThreadPlan | None]:
    """Seeds, device, CPU threads and the process group; the thread plan on CPU, else None."""
    ctx = dist_context()
    init_seeds(opts.seed + 1 + max(ctx.rank, 0), opts.deterministic)
    device = select_device(opts.device, opts.batch_size, ctx)
    threads = None  # CPU: how torch's threads and the loader workers share the cores (core/cpu.py)
    if device.type == "cpu":
        threads = training_threads(opts.threads, opts.workers, ctx.world_size)
        torch.set_num_threads(threads.threads)
        if ctx.is_main:
            LOGGER.info(f"CPU: {threads.threads} torch thread(s): {threads.why}")
    _check_sync_bn(opts.sync_bn, ctx, device)
    if ctx.distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ctx, device, threads


def _run_folder(opts: TrainOptions, ctx: DistContext, hyp: dict, data_cfg: Mapping,
                resume_path: Path | None) -> CheckpointSaver:
    """The run folder: hyp.yaml and opt.yaml now; results.csv and checkpoints every epoch."""
    save_dir = Path(resume_path).parent if resume_path else next_run_dir(opts.project, opts.name, opts.exist_ok)
    saver = CheckpointSaver(save_dir, opts.save and ctx.is_main, hyp, {**asdict(opts), "data": data_cfg.get("yaml_file")})
    saver.start(resumed=resume_path is not None)
    return saver


def _model(model: Any, data_cfg: Mapping, opts: TrainOptions) -> tuple[nn.Module, bool]:
    """(model, fresh): the model for the data's classes, and whether it trains from scratch."""
    net, _, fresh = _build_model(model, int(data_cfg["nc"]), list(data_cfg["names"]), opts.weights)
    gs = max(int(net.stride.max()), 32)
    if opts.imgsz % gs:
        raise ValueError(f"--imgsz {opts.imgsz} must be a multiple of the max stride {gs}")
    return net, fresh


def _loaders(opts: TrainOptions, data_cfg: Mapping, hyp: dict, ctx: DistContext, device: torch.device,
             threads: ThreadPlan | None, saved_mosaic: float | None = None) -> tuple[Any, Any, Any]:
    """(train loader, its dataset, val loader or None off rank 0). The training loader is built once: at
    close_epoch its dataset turns mosaic/mixup/copy-paste off in the running workers
    (YoloDataset.close_mosaic), so no second set of workers forks from a grown trainer. A resumed run
    trains with the mosaic probability its checkpoint saved (`saved_mosaic`: AutoMosaic's decision)."""
    yield_cpu = threads is not None and workers_yield(threads, opts.workers)
    train_loader, train_set = core.data.loader.create_dataloader(
        data_cfg["train"], opts.imgsz, opts.batch_size // ctx.world_size, hyp, augment=True, cache=opts.cache,
        workers=opts.workers, shuffle=True, rank=ctx.rank, world_size=ctx.world_size, seed=opts.seed,
        nc=int(data_cfg["nc"]), prefix="train: ", low_priority=yield_cpu)
    require_boxes(train_set, data_cfg["train"])  # YOLOv5 stops too: background only trains nothing
    if saved_mosaic is not None:  # before the workers start: they copy the dataset
        train_set.set_mosaic(saved_mosaic)
    elif opts.automosaic and hyp["mosaic"] > 0:
        mosaic = apply_automosaic(train_set, opts.imgsz, hyp)
        if ctx.is_main:
            LOGGER.info(mosaic.message(hyp["mosaic"]))
    _start_workers(train_loader)
    # On CPU the validation loader runs in the main process: inference dominates there (letterboxing is a
    # few % of it) and two persistent val workers, idle through training, would cost ~600 MB of RSS.
    val_loader = None
    if ctx.is_main:
        val_loader, _ = core.data.loader.create_dataloader(
            data_cfg["val"], opts.imgsz, opts.batch_size // ctx.world_size * 2, hyp, augment=False, cache=opts.cache,
            workers=opts.workers if device.type == "cuda" else 0, shuffle=False, rank=-1, world_size=1,
            seed=opts.seed, nc=int(data_cfg["nc"]), prefix="val: ")
    return train_loader, train_set, val_loader


def _plots(opts: TrainOptions, ctx: DistContext, saver: CheckpointSaver, data_cfg: Mapping,
           train_set: Any) -> RunPlots | None:
    """The run folder's pictures on rank 0 when asked (and saving): labels.png now, from the training labels."""
    if not (opts.plots and saver.enabled):
        return None
    plots = RunPlots(saver.save_dir, list(data_cfg["names"]))
    plots.labels(train_set.labels)
    return plots


def _fit_anchors(net: nn.Module, train_set: Any, hyp: dict, opts: TrainOptions, fresh: bool, resumed: bool) -> None:
    """The anchor count the hyp asks, then AutoAnchor (refits only an untrained head: trained outputs are
    relative to their anchors; a resumed run has its own in the checkpoint)."""
    if is_anchor_free(net):
        LOGGER.info("AutoAnchor skipped: the anchor-free head (DetectAF) has no anchors (hyp anchors, anchor_t unused)")
        return
    if fresh:
        fit_anchor_count(net, int(round(hyp["anchors"])), train_set.labels, train_set.shapes, opts.imgsz,
                         thr=hyp["anchor_t"], seed=opts.seed)
    if opts.autoanchor and not resumed:
        check_anchors(net, train_set.labels, train_set.shapes, opts.imgsz, thr=hyp["anchor_t"], seed=opts.seed,
                      refit=fresh)


def _class_priors(net: nn.Module, labels: list[np.ndarray], nc: int) -> None:
    """The class priors of a model trained from scratch, from the training labels' class counts."""
    labelled = [lb[:, 0].astype(int) for lb in labels if len(lb)]
    counts = np.bincount(np.concatenate(labelled or [np.zeros(0, int)]), minlength=nc)[:nc].astype(float)
    net.initialize_biases(counts + 1.0)  # +1: a class absent from train still gets a finite prior


def _place(net: nn.Module, device: torch.device, opts: TrainOptions) -> nn.Module:
    """The model on its device in the training memory format, its first `opts.freeze` layers frozen."""
    net = net.to(device, memory_format=_memory_format(opts))  # checkpoints still store NCHW (core/checkpoint.py)
    for name, p in net.named_parameters():
        p.requires_grad_(not (opts.freeze and any(name.startswith(f"model.{i}.") for i in range(opts.freeze))))
    return net


def _loss(net: nn.Module, hyp: dict, nc: int, opts: TrainOptions) -> Callable:
    """The loss: its gains scale with layers, classes and image size (the checkpoint keeps the user's hyp);
    the anchor-free head's loss (core/loss_af.py) scales box only."""
    if is_anchor_free(net):
        return core.loss_af.ComputeLossAF(net, core.loss_af.scaled_gains_af(hyp), label_smoothing=opts.label_smoothing)
    return core.loss.ComputeLoss(net, core.loss.scaled_gains(hyp, net.model[-1].nl, nc, opts.imgsz),
                                 label_smoothing=opts.label_smoothing)


def _optimizer(net: nn.Module, hyp: dict, nc: int, images: int, opts: TrainOptions,
               ctx: DistContext) -> tuple[OptimizerPlan, torch.optim.Optimizer, Callable, Any, ModelEMA | None]:
    """(plan, optimizer, lr lambda, scheduler, EMA on rank 0): optimizer, nominal batch and accumulation
    decided once (core.optim.plan_optimizer), then built; the lr schedule; the EMA."""
    plan = plan_optimizer(opts.optimizer, hyp, nc, images, opts.batch_size, opts.epochs, opts.nbs)
    if opts.optimizer.lower() == "auto" and ctx.is_main:
        LOGGER.info(f"optimizer auto: {plan.name} lr0={plan.hyp['lr0']} momentum={plan.hyp['momentum']} "
                    f"nbs={plan.nbs}, {plan.steps} optimizer steps (--optimizer SGD: YOLOv5's recipe with the "
                    f"hyp's lr0 {hyp['lr0']})")
    optimizer = build_optimizer(net, plan.name, plan.hyp["lr0"], plan.hyp["momentum"], plan.weight_decay)
    lf = lr_lambda(opts.epochs, hyp["lrf"], opts.cos_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(net) if ctx.is_main else None
    return plan, optimizer, lf, scheduler, ema


def _precision(opts: TrainOptions, device: torch.device, ctx: DistContext) -> tuple[bool, bool]:
    """(amp, bf16): fp16 autocast on CUDA when `opts.amp`; CPU bf16 autocast as `opts.bf16` resolves here."""
    amp = bool(opts.amp and device.type == "cuda")
    bf16, why = resolve_bf16(opts.bf16, device)
    if ctx.is_main and (bf16 or opts.bf16 != "off"):
        LOGGER.info(f"bf16 autocast {'on' if bf16 else 'off'}: {why}")
    return amp, bf16


def _restore(s: TrainState, ckpt: dict) -> None:
    """Continue the run saved in a full checkpoint (last.pt or resume.pt) as if it had not stopped: weights,
    EMA, optimizer, epoch, best fitness, the rows of finished epochs and the rest of `_resume_state`."""
    n = s.counters
    s.optimizer.load_state_dict(ckpt["optimizer"])
    _match_state_layout(s.optimizer)
    if s.ema is not None and ckpt.get("ema"):
        s.ema.ema.load_state_dict({k: v.float() for k, v in ckpt["ema"].items()})
        s.ema.updates = ckpt["updates"]
    s.net.load_state_dict({k: v.float() if v.dtype.is_floating_point else v for k, v in ckpt["state_dict"].items()})
    n.start_epoch = ckpt["epoch"] + 1
    saved_best = ckpt.get("best_fitness")
    n.best_fitness = float("-inf") if saved_best is None else float(saved_best)  # 0.0 is a fitness, not "none"
    state = ckpt.get("train_state") or {}  # None in checkpoints written before it existed
    n.history = s.saver.resumed_history(n.start_epoch, state.get("history"))
    # the optimizer holds start_epoch's lr (set by the step that ended the saved epoch): the scheduler is at
    # start_epoch, so the step that ends it sets the lr of start_epoch + 1
    s.scheduler.last_epoch = n.start_epoch
    if "best_epoch" in state:
        n.best_epoch = int(state["best_epoch"])
        n.best = next((row for row in n.history if row["epoch"] == n.best_epoch), {})
    else:  # an older checkpoint: the best epoch from results.csv, whose fitness has 6 digits
        rounded_best = float(f"{n.best_fitness:.6g}")
        for row in n.history:
            if row.get("fitness", float("-inf")) >= rounded_best:
                n.best_epoch, n.best = int(row["epoch"]), row
    for name, value in state.get("counters", {}).items():
        setattr(n, name, value)
    s.guard.in_a_row, s.guard.skipped = state.get("guard", (0, 0))
    if state.get("scaler"):
        s.scaler.load_state_dict(state["scaler"])
    if "rng" in state and s.cfg.ctx.is_main:  # rank 0's states (DDP ranks keep their own seeds)
        set_rng_state(state["rng"])


def _resume_state(s: TrainState) -> dict[str, Any]:
    """What last.pt keeps, besides weights, EMA and optimizer, for `_restore` to continue exactly: the exact
    rows of results.csv (it has 6 digits), the best epoch (patience counts from it), the step counters (an
    accumulation can span epochs), the non-finite guard's counts, GradScaler's state, the mosaic probability
    trained with (AutoMosaic's decision) and the global RNG states. The data order and augmentations need
    none: they are functions of (seed, epoch) (core/data/loader.py); AutoAnchor's anchors are weights."""
    n = s.counters
    return {"history": n.history, "best_epoch": n.best_epoch,
            "counters": {"accumulate": n.accumulate, "last_opt_step": n.last_opt_step, "opt_steps": n.opt_steps,
                         "scaler_skips": n.scaler_skips},
            "guard": [s.guard.in_a_row, s.guard.skipped], "scaler": s.scaler.state_dict(),
            "mosaic": float(s.train_loader.dataset.hyp["mosaic"]), "rng": rng_state()}


def _wrap(net: nn.Module, opts: TrainOptions, ctx: DistContext, device: torch.device) -> nn.Module:
    """The model the training steps call: `net`, in DDP across processes, torch.compile'd when asked."""
    train_model = net
    if ctx.distributed:
        if opts.sync_bn:  # after the EMA copy: the EMA and the checkpoints keep plain BatchNorm2d
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        train_model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if opts.compile:
        train_model = compile_for_training(train_model, device)
        if ctx.is_main:
            LOGGER.info("torch.compile: the first training step compiles the model (about a minute on a 2-core "
                        "CPU the first time; inductor's on-disk cache makes later runs of the same shapes start in "
                        "seconds)")
    return train_model


# ---------------------------------------------------------------------------------------------------------
# the per-epoch code

def run_epoch(s: TrainState, epoch: int) -> str | None:
    """Train one epoch; on rank 0 validate it, record and save it; return why training stops now, or None
    (every rank gets rank 0's answer)."""
    s.callbacks.call("on_epoch_start", epoch)
    _adapt_threads(s, epoch)
    _close_mosaic_if_due(s, epoch)
    t_epoch = time.time()
    train = train_one_epoch(s, epoch)
    stop = _end_epoch(s, epoch, train, t_epoch) if s.cfg.ctx.is_main else None
    if s.cfg.ctx.distributed:  # every rank leaves the loop together
        flag = [stop]
        torch.distributed.broadcast_object_list(flag, 0)
        stop = flag[0]
    return stop


def train_one_epoch(s: TrainState, epoch: int) -> dict[str, float]:
    """One pass over the training data: {train_box, train_obj, train_cls (means), lr, train_seconds}."""
    cfg, n, phase = s.cfg, s.counters, s.callbacks.phase
    t0 = time.time()
    s.train_model.train()
    if hasattr(s.train_loader.sampler, "set_epoch"):
        s.train_loader.sampler.set_epoch(epoch)
    mloss = torch.zeros(3, device=cfg.device)  # mean over the batches with a finite loss
    finite_batches = torch.zeros((), device=cfg.device)
    skipped_before, scaler_skips_before = s.guard.skipped, n.scaler_skips
    s.optimizer.zero_grad()
    show = cfg.ctx.is_main and cfg.opts.progress
    batches = enumerate(_fetch(s.train_loader, phase))
    if show:
        batches = tqdm(batches, total=cfg.batches, desc=f"epoch {epoch + 1}/{cfg.opts.epochs}", leave=False,
                       bar_format="{l_bar}{bar:20}{r_bar}")
    for i, (imgs, targets, paths, _) in batches:
        ni = i + cfg.batches * epoch  # batches since the start of training
        if s.plots is not None and epoch == n.start_epoch:
            with s.callbacks.phase("pictures"):
                s.plots.train_batch(i, imgs, targets, paths)  # the first batches as augmented (reads them only)
        if cfg.warmup_iters and ni <= cfg.warmup_iters:
            n.accumulate = warmup(s.optimizer, ni, cfg.warmup_iters, epoch, cfg.plan.hyp, cfg.lf, cfg.plan.nbs,
                                  cfg.opts.batch_size)
        loss, loss_items = _forward_loss(s, imgs, targets)
        finite = s.guard.observe(loss, loss_items)  # on the device: no sync per batch
        with phase("backward"):
            if cfg.ctx.distributed:
                loss = loss * cfg.ctx.world_size  # DDP averages gradients across processes
            s.scaler.scale(loss).backward()
        if ni - n.last_opt_step >= n.accumulate:
            with phase("optimizer"):
                _step_or_skip(s, epoch, i)
            n.last_opt_step = ni
        mloss = torch.where(finite, (mloss * finite_batches + loss_items) / (finite_batches + 1), mloss)
        finite_batches = finite_batches + finite
        if show:
            batches.set_postfix(box=f"{mloss[0]:.4f}", obj=f"{mloss[1]:.4f}", cls=f"{mloss[2]:.4f}")
    _log_skipped_steps(s, epoch, skipped_before, scaler_skips_before)
    lr = s.optimizer.param_groups[1]["lr"]
    s.scheduler.step()
    return {"train_box": float(mloss[0]), "train_obj": float(mloss[1]), "train_cls": float(mloss[2]), "lr": lr,
            "train_seconds": time.time() - t0}


def validate_epoch(s: TrainState, epoch: int, train: Mapping[str, float]) -> dict[str, Any]:
    """Validate the EMA model (rank 0): the epoch's row of results.csv, without its total seconds."""
    t0 = time.time()
    with s.callbacks.phase("validation"):
        vm = core.val.validate(s.ema.ema, s.val_loader, compute_loss=s.compute_loss, names=s.net.names,
                               half=s.cfg.amp, bf16=s.cfg.bf16, progress=False,
                               collector=s.plots.validation() if s.plots is not None else None)
    s.callbacks.call("on_val_end", epoch, vm)
    return {"epoch": epoch, "train_box": train["train_box"], "train_obj": train["train_obj"],
            "train_cls": train["train_cls"], "P": vm["P"], "R": vm["R"], "mAP50": vm["mAP50"],
            "mAP50-95": vm["mAP50-95"], "fitness": float(weighted_fitness(vm, s.cfg.opts.fitness_weights)),
            "val_box": vm["val_box"], "val_obj": vm["val_obj"], "val_cls": vm["val_cls"], "lr": train["lr"],
            "train_seconds": train["train_seconds"], "val_seconds": time.time() - t0}


def _end_epoch(s: TrainState, epoch: int, train: Mapping[str, float], t_epoch: float) -> str | None:
    """Rank 0 after training an epoch: validate, keep the best, save, log; why training stops now, or None."""
    n = s.counters
    metrics = validate_epoch(s, epoch, train)
    metrics["seconds"] = time.time() - t_epoch
    n.history.append(metrics)
    improved = metrics["fitness"] >= n.best_fitness  # YOLOv5: equal to the best is not worse
    if improved:
        n.best_fitness, n.best_epoch, n.best = metrics["fitness"], epoch, metrics
    with s.callbacks.phase("checkpoint"):
        s.saver.save_epoch(s.net, s.ema, s.optimizer, n.history, improved, n.best_fitness, _resume_state(s))
    with s.callbacks.phase("pictures"):
        _pictures_and_trackers(s, epoch, metrics)
    LOGGER.info(f"epoch {epoch}: mAP50 {metrics['mAP50']:.4f} mAP50-95 {metrics['mAP50-95']:.4f} "
                f"fitness {metrics['fitness']:.4f} ({metrics['seconds']:.1f}s)")
    return _stop_reason(s, epoch, metrics)


def _fetch(loader: Any, phase: Callable[[str], Any]) -> Iterator:
    """The loader's batches, each wait for the next one (the pass's start included) in phase 'data'."""
    with phase("data"):
        batches = iter(loader)
        batch = next(batches, None)
    while batch is not None:
        yield batch
        with phase("data"):
            batch = next(batches, None)


def _forward_loss(s: TrainState, imgs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's loss (phases forward and loss): CUDA AMP runs model and loss under one fp16 autocast (as
    YOLOv5); CPU bf16 runs only the network in bf16 and the loss in fp32 (bf16 keeps 8 bits of mantissa: too
    few for the loss sums)."""
    cfg, phase = s.cfg, s.callbacks.phase
    with nullcontext() if cfg.bf16 else torch.autocast(device_type=cfg.device.type, enabled=cfg.amp):
        with phase("forward"):
            imgs = imgs.to(cfg.device, non_blocking=True, memory_format=_memory_format(cfg.opts)).float() / 255
            preds = train_forward(s.train_model, imgs, bf16=cfg.bf16)
        with phase("loss"):
            loss, items = s.compute_loss(preds, targets.to(cfg.device))
            if s.callbacks.extra_loss is not None:  # e.g. distillation (core.callbacks.Callbacks.extra_loss)
                loss = loss + s.callbacks.extra_loss(imgs, preds)
            return loss, items


def _step_or_skip(s: TrainState, epoch: int, i: int) -> None:
    """The optimizer step due after batch i, or its skip when the guard has seen a non-finite loss."""
    n = s.counters
    n.opt_steps += 1
    if s.guard.step_ok(n.opt_steps, epoch, i, s.cfg.hyp["lr0"]):
        _optimizer_step(s)
    else:
        _skip_step(s)


def _optimizer_step(s: TrainState) -> None:
    """Unscale, hooks, clip, step, EMA: once per `accumulate` batches with finite losses."""
    n = s.counters
    s.scaler.unscale_(s.optimizer)  # hooks and clipping see true gradients
    s.callbacks.call("after_backward", unwrap(s.train_model))
    norm = nn.utils.clip_grad_norm_(s.net.parameters(), max_norm=10.0)
    if s.callbacks.after_clip is not None:
        clip = min(1.0, 10.0 / (float(norm) + 1e-6))  # clip_grad_norm_'s own factor
        s.callbacks.call("after_clip", unwrap(s.train_model),
                         StepInfo(clip, s.cfg.opts.batch_size * n.accumulate, s.ema.ema if s.ema is not None else None))
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad()
    if s.ema is not None:
        s.ema.update(s.net)
    if s.cfg.amp:  # only an inf/NaN gradient lowers the scale; reading it costs no extra sync after step()
        scale, n.amp_scale = n.amp_scale, s.scaler.get_scale()
        n.scaler_skips += n.amp_scale < scale


def _skip_step(s: TrainState) -> None:
    """Drop the gradients of batches with a non-finite loss. Under AMP, GradScaler sees them, skips the
    step and lowers its scale, as it does for any overflow; no hooks, no clipping, no EMA update."""
    if s.cfg.amp:
        s.scaler.unscale_(s.optimizer)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.counters.amp_scale = s.scaler.get_scale()
    s.optimizer.zero_grad()


def _log_skipped_steps(s: TrainState, epoch: int, skipped_before: int, scaler_skips_before: int) -> None:
    """Say how many optimizer steps this epoch skipped, for a non-finite loss or (AMP) a non-finite gradient."""
    if s.guard.skipped > skipped_before:
        LOGGER.warning(f"epoch {epoch}: {s.guard.skipped - skipped_before} optimizer steps skipped for a "
                       f"non-finite loss ({s.guard.skipped} in the run)")
    if s.counters.scaler_skips > scaler_skips_before:
        LOGGER.info(f"epoch {epoch}: AMP skipped {s.counters.scaler_skips - scaler_skips_before} optimizer steps "
                    f"for inf/NaN gradients (GradScaler lowered its scale)")


def _adapt_threads(s: TrainState, epoch: int) -> None:
    """Auto threads on CPU: before each later epoch, re-decide from the load other processes put on the CPU
    during the last one (a rounding-level change of the numerics, logged)."""
    if s.threads is not None and epoch > s.counters.start_epoch and (change := s.threads.update()):
        LOGGER.warning(f"epoch {epoch}: {change}")


def _close_mosaic_if_due(s: TrainState, epoch: int) -> None:
    """From close_epoch on (also when a resumed run starts past it): no mosaic, mixup or copy-paste."""
    if epoch >= s.cfg.close_epoch and not s.counters.mosaic_closed:
        s.counters.mosaic_closed = True
        if s.cfg.ctx.is_main:
            LOGGER.info(f"epoch {epoch}: mosaic and mixup off for the last {s.cfg.opts.epochs - epoch} epochs "
                        f"(--close-mosaic {s.cfg.opts.close_mosaic})")
        s.train_loader.dataset.close_mosaic()  # before this epoch's pass sends its first index to the workers


def _final_pictures_and_trackers(s: TrainState, n: Counters) -> None:
    """The last validation's curves, confusion matrix and batches; the trackers closed with them."""
    if s.plots is not None:
        s.plots.final()
    if s.tracker is not None:
        s.tracker.finish(n.best, s.plots.written if s.plots is not None else {}, len(n.history) - 1)
    if s.mlflow is not None:
        s.mlflow.finish(s.plots.written if s.plots is not None else {})


def _pictures_and_trackers(s: TrainState, epoch: int, metrics: dict) -> None:
    """results.png redrawn, and the epoch's scalars (and the pictures so far) to TensorBoard and MLflow."""
    if s.plots is not None:
        s.plots.results(s.saver.results, metrics["seconds"])
    if s.tracker is not None:
        s.tracker.epoch(epoch, metrics)
        s.tracker.images(s.plots.written if s.plots is not None else {}, epoch)  # labels, training batches
    if s.mlflow is not None:
        s.mlflow.epoch(epoch, metrics)


def _stop_reason(s: TrainState, epoch: int, metrics: dict) -> str | None:
    """Rank 0 after each epoch: patience, then the on_epoch_end callback (which may raise StopTraining)."""
    patience = s.cfg.opts.patience
    reason = "early_stop" if patience and epoch - s.counters.best_epoch >= patience else None
    try:
        s.callbacks.call("on_epoch_end", epoch, metrics)
    except StopTraining as e:
        reason = f"callback: {e.reason}"
    return reason


# ---------------------------------------------------------------------------------------------------------
# helpers

def _finished_run(opts: TrainOptions) -> FitResult | None:
    """For `opts.resume` of a run that already ended: its saved result, else None.

    A stripped last.pt with no resume.pt beside it can only be a normal end (a signal writes resume.pt
    before stripping), so a run killed after its final strip is finished, not lost."""
    path = resolve_resume(opts.resume, opts.project)
    if path.name != "last.pt" or (path.parent / "resume.pt").exists():
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("optimizer") is not None:
        return None
    history = read_history(path.parent / "results.csv")
    best = max(history, key=lambda h: h.get("fitness", float("-inf")), default={})
    saved_best = ckpt.get("best_fitness")
    LOGGER.info(f"resume: {path.parent} already finished (epoch {ckpt['epoch']} was its last); nothing to resume. "
                f"To train further, start a new run from it: --weights {path}")
    best_path = path.parent / "best.pt"
    return FitResult(history=history, best=best, stop_reason="already finished", save_dir=path.parent,
                     best_fitness=float("-inf") if saved_best is None else float(saved_best),
                     best_path=best_path if best_path.exists() else None, last_path=path)


def _build_model(model: Any, nc: int, names: list[str], weights: str | None = None) -> tuple[nn.Module, dict | None, bool]:
    """Return (model, checkpoint or None, fresh) for a yaml path, arch dict, checkpoint path or Model.

    A checkpoint path builds its own architecture with the data's class count; `weights` (a checkpoint)
    starts a yaml/arch model from it. Either way every tensor whose name and shape match is copied.
    """
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
            LOGGER.warning(f"{model}: checkpoint has nc={ckpt['arch']['nc']}, data has nc={nc}: Detect outputs "
                           f"built fresh")
        weights, fresh = str(model), False
    else:
        net = Model(copy.deepcopy(model) if isinstance(model, Mapping) else str(model), nc=nc)
        fresh = weights is None  # a transferred head keeps its biases and anchors
    if weights is not None:
        source = ckpt if ckpt is not None else load_checkpoint(weights)
        copied, total = transfer_weights(net, source["ema"] or source["state_dict"])
        LOGGER.info(f"Transferred {copied}/{total} items from {weights}")
    net.names = list(names)
    return net, ckpt, fresh


def _start_workers(loader) -> None:
    """Fork the loader's persistent workers now, while the parent is small: a forked worker maps every
    resident page of its parent, and the model, the optimizer (whose first construction imports
    torch._dynamo, ~70 MB) and the EMA come later. The batches they prefetch meanwhile are dropped when the
    first epoch starts its own pass (persistent workers finish their queue first); a pass is a function of
    its epoch (core/data/loader.py), so the dropped one changes nothing."""
    if loader.num_workers > 0:
        iter(loader)


def _memory_format(opts: TrainOptions) -> torch.memory_format:
    return torch.channels_last if opts.channels_last else torch.contiguous_format


def _check_sync_bn(sync_bn: bool, ctx: Any, device: torch.device) -> None:
    """--sync-bn applies to a DDP run on GPUs; say why otherwise, before anything is built."""
    if not sync_bn:
        return
    if not ctx.distributed:
        if ctx.is_main:
            LOGGER.warning("--sync-bn ignored: a single process already normalises over its whole batch")
    elif device.type != "cuda":
        raise DeviceError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only. On CPU (gloo) drop "
                          "--sync-bn; each process then normalises its own share of the batch, as without DDP.")


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give per-parameter optimizer state (momentum, Adam moments; saved NCHW) its parameter's memory format."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


class _Interrupts:
    """Inside the block SIGINT and SIGTERM raise one KeyboardInterrupt, so a killed run cleans up like Ctrl-C;
    signals after the first are recorded, not raised, so the cleanup that saves resume.pt runs to its end.

    Under torchrun a Ctrl-C reaches each rank twice (from the terminal, then forwarded by torchrun), and the
    second one used to land inside the cleanup and cut it short (no resume.pt). `received` also tells a
    signal from a crash when the first thing to surface is another error (a peer rank that died of the same
    Ctrl-C breaks this rank's all-reduce)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.received: int | None = None
        self.previous = {}
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not in the main thread: leave signals alone
            pass
        return self

    def _handle(self, signum, frame):
        first = self.received is None
        self.received = signum
        if first:
            raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


if __name__ == "__main__":
    from core.train_cli import main  # here, not at the top: core.train_cli imports this module

    raise SystemExit(main())
