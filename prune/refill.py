"""`--refill`: after the share search, give channels back where they cost nothing the target counts.

At a tight latency budget the global threshold leaves most coupled groups at their floor, including deep
low-resolution layers whose channels cost next to nothing on the device (bench/results/deploy.md: at 1.5x
Torch-Pruning kept 32 channels in a few such layers where ours kept 16, at the same latency). The refill walks
the groups that lost channels, cheapest first (the GFLOPs one more conv block adds: low resolution first), and
grows each by one block (the `round_to` multiple, its best pruned channels by score) when the grown model still
fits:
- a GFLOPs or parameter target: its cost still meets the target (exact, so the budget is spent to the tolerance);
- a latency target: timed beside the model the share search chose (which met the target), in one interleaved
  loop, it is at most `slack` slower: a paired ratio, so the host's load moves both, and the slack bounds how far
  the accepted steps together can drift from the searched model's latency.
Passes repeat while a pass grew something, up to `max_evals` candidates; a pass stops after `patience` misses
in a row (the cheap groups come first, so the rest cost more). A latency refill ends with a check: each step was
timed briefly, and short loops on a busy host let noise through, so the grown model is timed again beside the
searched one in a loop `VERIFY_FACTOR` times longer; where it is over the slack, the steps are undone from the
last, the longest prefix that passes the long check kept (bisection on the number of steps). The result is the
extra channels per group,
`MaskOptions.grow`, which compute_masks adds after its rounding: the stages after the search stay as they are.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from torch import nn

from core.export import export_onnx
from core.model.info import model_gflops
from prune.graph import trace
from prune.masks import MaskOptions, compute_masks
from prune.measure import cpu_latency
from prune.target import Target, pruned_at, target_cost

__all__ = ["RefillResult", "cost_fits", "latency_fits", "refill", "refill_order"]

LOGGER = logging.getLogger(__name__)
DEFAULT_SLACK = 0.01  # a latency refill may make the model this much slower than the searched one (paired ratio)
VERIFY_FACTOR = 10  # the final check's loop is this many times the steps' loop


@dataclass
class RefillResult:
    grow: dict[str, int]  # group (its first conv) -> channels kept beyond the share's masks
    tried: list[dict] = field(default_factory=list)  # every candidate: group, channels, cost, accepted
    channels_added: int = 0
    verified: list[dict] = field(default_factory=list)  # the final check: steps kept, cost, fits

    def as_dict(self) -> dict:
        return asdict(self)


def _sizes(model: nn.Module, masks: MaskOptions) -> dict[str, tuple[int, int]]:
    """(kept, total) channels of every coupled group at `masks`, keyed by the group's first conv."""
    graph = trace(model)
    kept, _ = compute_masks(graph, masks)
    return {grp[0]: (int(kept[grp[0]].sum()), kept[grp[0]].numel()) for grp in graph.groups()}


def refill_order(model: nn.Module, masks: MaskOptions, shortcuts: int, imgsz: int) -> list[tuple[str, float]]:
    """The groups that lost channels, each with the GFLOPs one more block of `round_to` channels adds to the pruned
    model, cheapest first (ties: the order of the network)."""
    base = model_gflops(pruned_at(model, masks.global_percent, masks, shortcuts), imgsz)
    out = []
    for name, (kept, total) in _sizes(model, masks).items():
        if kept < total:
            grown = replace(masks, grow={**(masks.grow or {}), name: (masks.grow or {}).get(name, 0) + masks.round_to})
            out.append((name, model_gflops(pruned_at(model, masks.global_percent, grown, shortcuts), imgsz) - base))
    return sorted(out, key=lambda x: x[1])  # stable: the network's order among equals


def refill(model: nn.Module, masks: MaskOptions, shortcuts: int, target: Target, imgsz: int,
           fits: Callable[[nn.Module], tuple[bool, float]], max_evals: int = 80, patience: int = 4,
           verify: Callable[[nn.Module], tuple[bool, float]] | None = None) -> RefillResult:
    """Grow the groups of `model` pruned at `masks` (its share) while `fits(grown model)` says the grown model still
    fits: (fits, its cost); then, with `verify` (a stricter fits), keep the longest prefix of the steps it passes.
    See the module docstring; returns the extra channels per group."""
    start: dict[str, int] = dict(masks.grow or {})
    grow, steps = dict(start), []  # steps: (group, channels) in the order they were kept
    tried: list[dict] = []
    grew = True
    while grew and len(tried) < max_evals:
        grew, misses = False, 0
        current = replace(masks, grow=dict(grow))
        sizes = _sizes(model, current)
        for name, added_gflops in refill_order(model, current, shortcuts, imgsz):
            if len(tried) >= max_evals or misses >= patience:
                break
            step = min(masks.round_to, sizes[name][1] - sizes[name][0])
            candidate = {**grow, name: grow.get(name, 0) + step}
            ok, cost = fits(pruned_at(model, masks.global_percent, replace(masks, grow=candidate), shortcuts))
            tried.append({"group": name, "channels": sizes[name][0] + step, "gflops_added": added_gflops,
                          "cost": cost, "accepted": ok})
            LOGGER.info(f"refill: {name} {sizes[name][0]} -> {sizes[name][0] + step} channels: {target.show(cost)} "
                        f"({'kept' if ok else 'undone'})")
            if ok:
                grow, grew, misses = candidate, True, 0
                steps.append((name, step))
                sizes[name] = (sizes[name][0] + step, sizes[name][1])
            else:
                misses += 1
    verified: list[dict] = []
    if verify is not None and steps:
        grow = _verified_prefix(model, masks, shortcuts, start, steps, verify, verified, target)
    return RefillResult(grow, tried, sum(grow.values()) - sum(start.values()), verified)


def _verified_prefix(model, masks, shortcuts, start, steps, verify, log, target) -> dict[str, int]:
    """The grow of the longest prefix of `steps` that `verify` passes (the start itself, 0 steps, passed the
    search); the cost of a prefix grows with its length, so bisection on the length."""
    def grow_of(k: int) -> dict[str, int]:
        out = dict(start)
        for name, step in steps[:k]:
            out[name] = out.get(name, 0) + step
        return out

    def check(k: int) -> bool:
        ok, cost = verify(pruned_at(model, masks.global_percent, replace(masks, grow=grow_of(k)), shortcuts))
        log.append({"steps": k, "cost": cost, "fits": ok})
        LOGGER.info(f"refill check: {k}/{len(steps)} steps -> {target.show(cost)} ({'fits' if ok else 'over'})")
        return ok

    lo, hi = 0, len(steps)
    if check(hi):
        return grow_of(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if check(mid):
            lo = mid
        else:
            hi = mid
    return grow_of(lo)


def cost_fits(model: nn.Module, target: Target, imgsz: int) -> Callable[[nn.Module], tuple[bool, float]]:
    """A GFLOPs or parameter target (of `model`, the unpruned one): the grown model fits while its cost meets it."""
    cost = target_cost(model, target, imgsz, None)

    def fits(model: nn.Module) -> tuple[bool, float]:
        c = float(cost(model))
        return target.met(c), c
    return fits


def latency_fits(start: nn.Module, imgsz: int, threads: int, runs: int, backend: str, tmp_dir: Path,
                 slack: float = DEFAULT_SLACK) -> Callable[[nn.Module], tuple[bool, float]]:
    """A latency target: the grown model fits while, timed beside `start` (the searched model) in one interleaved
    loop, its median is at most (1 + slack) times start's. The cost reported is its median in ms."""
    if backend == "onnxruntime":
        start_file = export_onnx(start, tmp_dir / "refill_start.onnx", imgsz=imgsz)

    def fits(model: nn.Module) -> tuple[bool, float]:
        if backend == "onnxruntime":
            files = {"start": start_file, "grown": export_onnx(model, tmp_dir / "refill_candidate.onnx", imgsz=imgsz)}
            lat = cpu_latency({}, imgsz, threads, runs=runs, onnx=files)
        else:
            lat = cpu_latency({"start": start, "grown": model}, imgsz, threads, runs=runs)
        return lat["grown"].median <= lat["start"].median * (1 + slack), lat["grown"].median
    return fits
