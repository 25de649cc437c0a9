"""Hooks through which evolution and pruning drive the trainer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


__all__ = ["Callbacks", "StepInfo", "StopTraining"]


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
    """

    on_train_start: Optional[Callable[[Any], None]] = None
    on_epoch_start: Optional[Callable[[int], None]] = None
    after_backward: Optional[Callable[[Any], None]] = None
    after_clip: Optional[Callable[[Any, StepInfo], None]] = None
    on_epoch_end: Optional[Callable[[int, dict], None]] = None
    on_train_end: Optional[Callable[[Any], None]] = None

    def call(self, name: str, *args: Any) -> None:
        hook = getattr(self, name)
        if hook is not None:
            hook(*args)
