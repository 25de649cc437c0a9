"""Non-finite training losses: skip the optimizer step they would spoil; fail only when they persist.

A single NaN/inf batch (an fp16 overflow, a degenerate augmented image) should cost one step, not the
run; a loss that stays non-finite means the run has diverged and must stop with a message that says
where. The loss of every batch is checked on the device (no host sync per batch); the decision is
read once per optimizer step, when the step needs it anyway (GradScaler syncs there too). Under DDP
the flag is all-reduced first, so all ranks skip, continue or fail at the same step: a rank that
raised alone would leave the others waiting forever in the next collective.
"""
from __future__ import annotations

import torch

MAX_NONFINITE_STEPS = 3  # optimizer steps in a row with a non-finite loss before the run fails


class NonFiniteGuard:
    """Collects per-batch loss finiteness on the device; `step_ok` decides at each optimizer step."""

    def __init__(self, device: torch.device, distributed: bool = False, limit: int | None = None):
        self.distributed = distributed
        self.limit = limit if limit is not None else MAX_NONFINITE_STEPS
        self.flag = torch.zeros(1, device=device)  # 1 once a batch since the last step had a non-finite loss
        self.items = torch.zeros(3, device=device)  # box/obj/cls of the last non-finite batch
        self.in_a_row = 0
        self.skipped = 0  # steps skipped for a non-finite loss, over the run

    def observe(self, loss: torch.Tensor, loss_items: torch.Tensor) -> torch.Tensor:
        """Record one batch; returns its finiteness as a device bool (no sync)."""
        finite = torch.isfinite(loss.detach()).all()
        self.flag = torch.maximum(self.flag, (~finite).float())
        self.items = torch.where(finite, self.items, loss_items.detach().float())
        return finite

    def step_ok(self, step: int, epoch: int, batch: int, lr0: float) -> bool:
        """True when every batch since the last optimizer step had a finite loss. Otherwise the step is to
        be skipped; `limit` skipped steps in a row raise FloatingPointError (on every rank at once)."""
        local = self.flag.clone()
        if self.distributed:
            torch.distributed.all_reduce(self.flag, op=torch.distributed.ReduceOp.MAX)
        bad, mine = (torch.cat([self.flag, local]) > 0).tolist()  # the one host sync, once per optimizer step
        self.flag.zero_()
        if not bad:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.limit:
            raise FloatingPointError(
                f"training loss not finite for {self.in_a_row} optimizer steps in a row (limit "
                f"{self.limit}); the last at optimizer step {step} (epoch {epoch}, batch {batch}) with "
                + (f"box/obj/cls = {[round(v, 6) for v in self.items.tolist()]}" if mine else
                   "the non-finite loss on another rank (this rank's were finite)")
                + f"; lr0={lr0}: the run diverged "
                "(try a lower lr0 or a longer warmup)")
        return False
