"""How bench.fidelity measures two engines' numbers against each other, and the rows of its table.

A tensor pair is compared in float64 by its largest absolute difference and by the relative norm
||ours - peer|| / ||peer||; a dict of tensors (gradients, a state dict) by the worst entry of each. A row is
"same" when its relative difference is within `tol`: FLOAT_NOISE for numbers that pass through a float32
computation (our loss runs in float32 on purpose, whatever its input), exactly 0 for counts and indices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

__all__ = ["FLOAT_NOISE", "Row", "assignment_rows", "dict_diff", "table", "tensor_diff", "trace_rows"]

FLOAT_NOISE = 1e-5  # relative; float32 rounding (~6e-8 per operation) summed over a loss and its backward
TINY = 1e-300  # keeps the relative norm finite when the reference is all zeros


@dataclass(frozen=True)
class Row:
    """One line of the fidelity table."""

    part: str            # loss, assignment, gradients, optimizer step, schedule...
    what: str
    size: str            # what was compared: elements, parameters, iterations, counts
    max_abs: float
    rel: float
    tol: float = FLOAT_NOISE
    note: str = ""
    why: str = ""        # the documented reason when the engines differ here on purpose

    @property
    def same(self) -> bool:
        return self.rel <= self.tol  # NaN (a shape mismatch) is never the same

    def verdict(self) -> str:
        return "same" if self.same else "differs, on purpose" if self.why else "**differs**"

    def cells(self) -> list[str]:
        return [self.part, self.what, self.size, f"{self.max_abs:.3g}", f"{self.rel:.3g}", self.verdict(),
                "; ".join(x for x in (self.why, self.note) if x)]


def tensor_diff(ours: torch.Tensor, peer: torch.Tensor) -> tuple[float, float]:
    """(max |ours - peer|, ||ours - peer|| / ||peer||) in float64; (nan, nan) when the shapes differ."""
    a, b = torch.as_tensor(ours).double(), torch.as_tensor(peer).double()
    if a.shape != b.shape:
        return math.nan, math.nan
    if a.numel() == 0:
        return 0.0, 0.0
    d = a - b
    return float(d.abs().max()), float(d.norm() / max(float(b.norm()), TINY))


def dict_diff(ours: Mapping[str, torch.Tensor], peer: Mapping[str, torch.Tensor]) -> tuple[float, float, str]:
    """Over the keys of both: the largest max-abs difference, the largest relative norm and the key that has
    it. Keys in only one dict make it (nan, nan, that key)."""
    only = sorted(set(ours) ^ set(peer))
    if only:
        return math.nan, math.nan, only[0]
    worst_abs, worst_rel, worst_key = 0.0, 0.0, ""
    for key in ours:
        a, r = tensor_diff(ours[key], peer[key])
        if not (r <= worst_rel):  # NaN, or larger
            worst_rel, worst_key = r, key
        worst_abs = max(worst_abs, a) if not math.isnan(a) else a
    return worst_abs, worst_rel, worst_key


def assignment_rows(ours: Sequence[Mapping[str, torch.Tensor]],
                    peer: Sequence[Mapping[str, torch.Tensor]]) -> list[Row]:
    """Per level: the positives (count, and every (image, anchor, cell, class) in the same order), then the
    box targets and matched anchors of all levels."""
    rows, boxes, anchors = [], [], []
    for level, (o, p) in enumerate(zip(ours, peer)):
        key_o = torch.stack([o[k].long() for k in ("b", "a", "gj", "gi", "tcls")], 1)
        key_p = torch.stack([p[k].long() for k in ("b", "a", "gj", "gi", "tcls")], 1)
        n_o, n_p = len(key_o), len(key_p)
        wrong = int((key_o != key_p).any(1).sum()) if n_o == n_p else max(n_o, n_p)
        rows.append(Row("assignment", f"P{level + 3} positives (image, anchor, cell, class)",
                        f"{n_o} ours / {n_p} peer", float(wrong), float(wrong) / max(n_p, 1), tol=0.0,
                        note=f"{wrong} differ"))
        if n_o == n_p:
            boxes.append((o["tbox"], p["tbox"]))
            anchors.append((o["anch"], p["anch"]))
    for what, pairs in (("box targets (xy in cell, wh), grid units", boxes), ("matched anchors, grid units", anchors)):
        if pairs:
            a, r = tensor_diff(torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]))
            rows.append(Row("assignment", what, f"{sum(len(x) for x, _ in pairs)} positives", a, r))
    return rows


def trace_rows(name: str, ours: Mapping[str, torch.Tensor], peer: Mapping[str, torch.Tensor],
               keys: Sequence[str], why: str = "") -> list[Row]:
    """One row per traced quantity of a schedule (lr per group, beta1, accumulation, steps), iteration by
    iteration; the optimizer steps taken are compared as a count."""
    rows = []
    for key in keys:
        a, r = tensor_diff(torch.nan_to_num(ours[key], nan=-1.0), torch.nan_to_num(peer[key], nan=-1.0))
        rows.append(Row("schedule", f"{name}: {key}", f"{len(peer[key])} iterations", a, r,
                        tol=FLOAT_NOISE if key.startswith(("lr", "beta", "ema")) else 0.0, why=why))
    steps_o, steps_p = int(ours["step"].sum()), int(peer["step"].sum())
    rows.append(Row("schedule", f"{name}: optimizer steps", f"{steps_o} ours / {steps_p} peer",
                    float(abs(steps_o - steps_p)), abs(steps_o - steps_p) / max(steps_p, 1), tol=0.0, why=why))
    return rows


def table(rows: Sequence[Row]) -> list[list[str]]:
    """The rows as markdown cells: part, compared, size, max abs diff, relative diff, verdict, why / note."""
    return [row.cells() for row in rows]
