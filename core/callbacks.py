"""Hooks through which evolution and pruning drive the trainer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


class StopTraining(Exception):
    """Raise from `on_epoch_end` to end training cleanly after the current epoch (checkpoints are kept)."""

    def __init__(self, reason: str = "stopped by callback"):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Callbacks:
    """Optional hooks called by `core.train.fit`; each defaults to doing nothing.

    after_backward(model): once per optimizer step, after AMP unscaling and before the step,
    so a gradient edit (e.g. the L1 sub-gradient on BN gammas) applies exactly once per step.
    """

    on_train_start: Optional[Callable[[Any], None]] = None
    on_epoch_start: Optional[Callable[[int], None]] = None
    after_backward: Optional[Callable[[Any], None]] = None
    on_epoch_end: Optional[Callable[[int, dict], None]] = None
    on_train_end: Optional[Callable[[Any], None]] = None

    def call(self, name: str, *args: Any) -> None:
        hook = getattr(self, name)
        if hook is not None:
            hook(*args)
