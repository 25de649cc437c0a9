"""Hooks through which evolution, pruning and the benchmarks drive the trainer."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

__all__ = ["Callbacks", "PHASES", "StepInfo", "StopTraining"]

# The phases of its own work the trainer runs inside `Callbacks.phase(name)`:
#   data        waiting for the next training batch (the epoch's first includes starting the loader's pass)
#   forward     the batch to the device as float, the network's forward
#   loss        the targets to the device, the loss
#   backward    the (AMP-scaled) backward pass
#   optimizer   once per optimizer step: unscale, after_backward, clip, after_clip, step, zero_grad, EMA
#               update (or the skip of a step after a non-finite loss)
#   validation  core.val.validate of the EMA model (rank 0)
#   checkpoint  results.csv, best.pt (when improved) and last.pt (rank 0)
PHASES = ("data", "forward", "loss", "backward", "optimizer", "validation", "checkpoint", "pictures")
_NO_PHASE = nullcontext()  # stateless, so one instance serves every phase when no hook is set


class StopTraining(Exception):
    """Raise from `on_epoch_end` to end training cleanly after the current epoch (checkpoints are kept)."""

    def __init__(self, reason: str = "stopped by callback"):
        super().__init__(reason)
        self.reason = reason


@dataclass
class StepInfo:
    """What `after_clip` sees at one optimizer step."""

    clip_factor: float  # scale the gradient-norm clip applied to the loss gradients (1.0 = none)
    samples: int  # images whose summed loss gradients this step applies (batch x accumulation)
    ema: Any = None  # the EMA model (validated and saved; updated in place after each step), or None


@dataclass
class Callbacks:
    """Optional hooks called by `core.train.fit`; each defaults to doing nothing.

    after_backward(model): once per optimizer step, after AMP unscaling and before clipping.
    after_clip(model, StepInfo): once per optimizer step, after clipping and before the step: a
    gradient edit here (e.g. the L1 sub-gradient on BN gammas) applies exactly once per step at a
    rate the loss gradient's norm does not change.
    on_val_end(epoch, val_metrics): rank 0, after each validation, with core.val.validate's whole result
    (per_class, speed_ms, images, ...), of which the epoch's results row keeps the metrics.
    extra_loss(imgs, preds): once per training batch, in phase 'loss', after the detection loss: imgs the batch
    as the network saw it (float in [0, 1] on the device, augmented), preds the network's training outputs (the
    head's raw maps); returns a tensor added to the batch's loss before backward, e.g. distillation from a
    teacher run on the same batch (prune/distill.py). The trainer's loss is the mean loss per image times the
    batch size (YOLOv5's convention): return the extra term on the same scale. It is not in train_box/obj/cls.
    around_phase(name): a context manager the trainer runs each phase of its own work in (PHASES above),
    e.g. a timer (bench/train_profile.py) or torch.profiler.record_function to label a trace. It must
    not touch the tensors; unset, the phases run in a shared no-op context.
    """

    on_train_start: Optional[Callable[[Any], None]] = None
    on_epoch_start: Optional[Callable[[int], None]] = None
    after_backward: Optional[Callable[[Any], None]] = None
    after_clip: Optional[Callable[[Any, StepInfo], None]] = None
    on_epoch_end: Optional[Callable[[int, dict], None]] = None
    on_train_end: Optional[Callable[[Any], None]] = None
    on_val_end: Optional[Callable[[int, dict], None]] = None
    around_phase: Optional[Callable[[str], ContextManager[Any]]] = None
    extra_loss: Optional[Callable[[Any, Any], Any]] = None

    def call(self, name: str, *args: Any) -> None:
        hook = getattr(self, name)
        if hook is not None:
            hook(*args)

    def phase(self, name: str) -> ContextManager[Any]:
        """The context the trainer runs phase `name` in: `around_phase(name)`, or a no-op when unset."""
        return _NO_PHASE if self.around_phase is None else self.around_phase(name)
