"""Sparsity training: the L1 sub-gradient on prunable BN gammas, s schedule, gamma logs.

Scale of `s`: the network-slimming papers' (Liu et al. 2017: s = 1e-4 .. 1e-5, SGD): the loss is
the per-sample mean and each optimizer step adds s*sign(gamma) to its gradient. The engine's loss
is summed over the images of a step (YOLOv5's loss x batch, accumulated over nbs / batch
micro-batches), so its gradient is N = batch x accumulation times the per-sample mean's; the same
penalty relative to the loss is therefore grad(gamma) += N * s * sign(gamma).

Penalties (`--penalty`): `l1` is network slimming's, s * sum|gamma|: it pushes every gamma toward zero
at the same rate, so in a short stage all gammas shrink alike and none separate (README, measured).
`polar` is the polarization regularizer (Zhuang et al., NeurIPS 2020), s * (t * sum|gamma| -
sum | |gamma| - mean|gamma| |), the mean over all prunable gammas of the model: a gamma below the mean
is pushed down at (t + 1) s, one above it at (t - 1) s, so the histogram splits into a group at zero
and a group that stays large (the bimodal histogram pruning wants). t > 1 keeps the penalty a
shrinkage everywhere.

Under Adam/AdamW (the sparse stage's default optimizer, `auto`) the sub-gradient is added to the gradient
before Adam divides by its running RMS, so `s` is not the papers' rate there: a gamma whose penalty
outweighs its loss gradient moves by about lr per step whatever `s` is, and `s` decides which gammas that
is. Measured from one trained baseline: AdamW split the gammas as SGD did (60% vs 58% below 1e-2) and
ended the stage above the baseline where SGD lost half of it (README, "Sparse stage optimizer").

The trainer calls `after_clip` once per optimizer step, after AMP unscaling and after gradient
clipping, so the penalty's rate is s whatever the loss gradient's norm (added before clipping, it
was scaled down with the loss gradient on every clipped step). The clip factor is logged per epoch.
The logged |gamma| are the EMA model's: the weights that are validated, saved and pruned.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from core.callbacks import Callbacks
from prune.graph import trace

LOGGER = logging.getLogger(__name__)

SCHEDULES = ("const", "linear", "step")
PENALTIES = ("l1", "polar")
DEFAULT_PENALTY = "polar"  # L1 does not select in short stages (README, "L1 vs polarization")
HIST_EDGES = [0.0] + [10 ** (e / 20) for e in range(-100, 31)]  # |gamma| bins: 0, 1e-5 ... 10^1.5, 1/20 decade
SMALL = 1e-2  # the "near zero" level reported per epoch


def s_at(epoch: int, epochs: int, s: float, schedule: str = "const") -> float:
    """Sparsity rate for `epoch` (0-based): const; linear decay to 0.1*s at the last epoch; step to 0.1*s at half."""
    if schedule not in SCHEDULES:
        raise ValueError(f"--s-schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if schedule == "const" or epochs <= 1:
        return s
    if schedule == "linear":
        return s * (1.0 - 0.9 * epoch / (epochs - 1))
    return s if epoch < math.ceil(epochs / 2) else 0.1 * s


def prunable_bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    """BNs of every prunable conv (all Conv modules the coupling graph knows)."""
    return [m.bn for m in trace(model).convs.values()]


@torch.no_grad()
def add_l1_subgradient(bns: list[nn.BatchNorm2d], s: float) -> None:
    """grad(gamma) += s * sign(gamma), in place (a missing grad counts as zero)."""
    for bn in bns:
        _add_grad(bn, s * torch.sign(bn.weight.detach()))


def _add_grad(bn: nn.BatchNorm2d, g: torch.Tensor) -> None:
    if bn.weight.grad is None:
        bn.weight.grad = g.clone()
    else:
        bn.weight.grad.add_(g)


@torch.no_grad()
def add_polar_subgradient(bns: list[nn.BatchNorm2d], s: float, t: float) -> None:
    """grad(gamma) += s * d/dgamma (t*sum|g| - sum| |g| - mean|g| |), the mean over all `bns` (polarization)."""
    absg = torch.cat([bn.weight.detach().abs() for bn in bns])
    mean = absg.mean()
    mean_sign = torch.sign(absg - mean).mean()  # the mean's own dependence on each |gamma|
    for bn in bns:
        w = bn.weight.detach()
        _add_grad(bn, s * torch.sign(w) * (t - torch.sign(w.abs() - mean) + mean_sign))


def gamma_stats(bns: list[nn.BatchNorm2d]) -> dict:
    """Histogram of all prunable |gamma| on fixed log bins, plus the share below SMALL."""
    g = torch.cat([bn.weight.detach().abs().float().cpu() for bn in bns])
    edges = torch.tensor(HIST_EDGES)
    idx = torch.bucketize(g.clamp(max=HIST_EDGES[-1] * 0.999), edges, right=True) - 1
    counts = torch.bincount(idx, minlength=len(HIST_EDGES) - 1)[: len(HIST_EDGES) - 1]
    return {"n": int(g.numel()), "mean": float(g.mean()), "median": float(g.median()),
            "share_small": float((g < SMALL).float().mean()), "edges": HIST_EDGES, "counts": counts.tolist()}


@dataclass
class SparsityTrainer:
    """Callbacks for core.train.fit that apply the penalty and log |gamma| each epoch.

    log_path: a JSON-lines file (one line per epoch, plus epoch -1 = before sparse training).
    """

    s: float = 1e-4
    schedule: str = "const"
    epochs: int = 1
    penalty: str = DEFAULT_PENALTY
    t: float = 1.2  # polarization's t (penalty "polar")
    log_path: Path | None = None
    steps: int = 0  # optimizer steps seen (penalty applications)
    log: list[dict] = field(default_factory=list)
    _s_now: float = 0.0
    _model: nn.Module | None = None
    _bns: list[nn.BatchNorm2d] = field(default_factory=list)
    _ema: nn.Module | None = None
    _ema_bns: list[nn.BatchNorm2d] = field(default_factory=list)
    _clips: list[float] = field(default_factory=list)  # clip factors of this epoch's steps

    def __post_init__(self):
        s_at(0, self.epochs, self.s, self.schedule)  # validates the schedule name early
        if self.penalty not in PENALTIES:
            raise ValueError(f"--penalty {self.penalty!r}: choose one of {', '.join(PENALTIES)}")
        self._s_now = self.s
        if self.log_path is not None:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.log_path).write_text("")

    def _bind(self, model: nn.Module) -> None:
        if model is not self._model:
            self._model, self._bns = model, prunable_bns(model)

    def on_train_start(self, model: nn.Module) -> None:
        self._bind(model)
        self._write(-1)

    def on_epoch_start(self, epoch: int) -> None:
        self._s_now = s_at(epoch, self.epochs, self.s, self.schedule)
        self._clips = []

    def after_clip(self, model: nn.Module, info) -> None:
        self._bind(model)
        rate = self._s_now * info.samples  # per-sample-mean scale (module doc)
        if self.penalty == "polar":
            add_polar_subgradient(self._bns, rate, self.t)
        else:
            add_l1_subgradient(self._bns, rate)
        self.steps += 1
        self._clips.append(info.clip_factor)
        if info.ema is not None and info.ema is not self._ema:
            self._ema, self._ema_bns = info.ema, prunable_bns(info.ema)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self._write(epoch)

    def _write(self, epoch: int) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return  # DDP: every rank applies the penalty, only rank 0 logs
        clips = self._clips if epoch >= 0 else []
        row = {"epoch": epoch, "s": self._s_now if epoch >= 0 else 0.0, "steps": self.steps,
               "gammas_of": "ema" if self._ema_bns else "model",
               "clip_mean": sum(clips) / len(clips) if clips else 1.0, "clip_min": min(clips, default=1.0),
               **gamma_stats(self._ema_bns or self._bns)}
        self.log.append(row)
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        LOGGER.info(f"sparse epoch {epoch}: s={row['s']:.2e} {row['gammas_of']} |gamma| median {row['median']:.4f}, "
                    f"{100 * row['share_small']:.1f}% below {SMALL:g}; gradient clip factor mean "
                    f"{row['clip_mean']:.3f} (min {row['clip_min']:.3f})")

    def callbacks(self):
        """A core.callbacks.Callbacks bound to this trainer."""
        return Callbacks(on_train_start=self.on_train_start, on_epoch_start=self.on_epoch_start,
                         after_clip=self.after_clip, on_epoch_end=self.on_epoch_end)
