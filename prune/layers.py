"""Layer pruning: remove the shortcut Bottlenecks of C3 blocks whose residual branch matters least.

A removed block becomes identity (y = x). Its branch is approximated by the constant it outputs
when its cv2 gammas are zero, a = act(beta of cv2.bn), which is absorbed downstream like a pruned
channel's constant (see surgery.py). This is exact when those gammas are zero and approximate
otherwise: the branch's input-dependent part is lost, which finetuning recovers.
"""
from __future__ import annotations

import copy
import re

import torch
import torch.nn as nn

from prune.graph import trace
from prune.surgery import absorb_constants, build_model

__all__ = ["LayerPruneError", "rank_shortcuts", "remove_shortcuts"]

_C3_BLOCK = re.compile(r"^(model\.\d+)\.m\.(\d+)$")


class LayerPruneError(ValueError):
    """The layer-pruning request cannot be met (e.g. more blocks than the model has)."""


def rank_shortcuts(model: nn.Module) -> list[tuple[str, float]]:
    """C3 shortcut Bottlenecks with the mean |gamma| of their cv2 BN (the one feeding the add), lowest first."""
    mods = dict(model.named_modules())
    scores = [(name, float(mods[name].cv2.bn.weight.detach().abs().mean()))
              for name in trace(model).shortcuts if _C3_BLOCK.match(name)]
    return sorted(scores, key=lambda t: t[1])


def block_renames(model: nn.Module, removed: list[str]) -> tuple[dict[str, int], dict[str, str | None]]:
    """New repeats per C3 and the old->new block prefix map ('model.4.m.1.' -> 'model.4.m.0.', None = removed)."""
    by_c3: dict[str, set[int]] = {}
    for name in removed:
        c3, k = _C3_BLOCK.match(name).groups()
        by_c3.setdefault(c3, set()).add(int(k))
    mods = dict(model.named_modules())
    repeats, prefix = {}, {}
    for c3, gone in by_c3.items():
        n = len(mods[c3].m)
        kept = [k for k in range(n) if k not in gone]
        repeats[c3] = len(kept)
        for k in range(n):
            prefix[f"{c3}.m.{k}."] = None if k in gone else f"{c3}.m.{kept.index(k)}."
    return repeats, prefix


def rename_key(key: str, prefix: dict[str, str | None]) -> str | None:
    """A state_dict key (or a conv name + '.') after block removal; None if it was removed."""
    for old, new in prefix.items():
        if key.startswith(old):
            return None if new is None else new + key[len(old):]
    return key


def remove_shortcuts(model: nn.Module, n: int) -> tuple[nn.Module, list[tuple[str, float]]]:
    """Remove the `n` lowest-ranked shortcut Bottlenecks; returns the new model and the removed (name, score)."""
    ranked = rank_shortcuts(model)
    if n < 0 or n > len(ranked):
        raise LayerPruneError(
            f"--shortcuts {n}: the model has {len(ranked)} shortcut Bottlenecks in C3 blocks "
            f"({', '.join(name for name, _ in ranked) or 'none'}); choose 0..{len(ranked)}")
    removed = ranked[:n]
    if not removed:
        return copy.deepcopy(model), []
    names = [name for name, _ in removed]
    work = copy.deepcopy(model)
    graph = trace(work)
    mods = dict(work.named_modules())
    constants = {}
    for name in names:
        cv2 = mods[f"{name}.cv2"]
        with torch.no_grad():
            constants[f"{name}.cv2"] = cv2.act(cv2.bn.bias.detach().double().cpu().clone())
    inside = {c.name for c in graph.consumers if any(c.name.startswith(b + ".") for b in names)}
    absorb_constants(graph, constants, skip=inside)

    repeats, prefix = block_renames(work, names)
    arch = copy.deepcopy(work.arch)
    arch["repeats"] = {**(arch.get("repeats") or {}), **repeats}
    channels = {}
    for key, value in (arch.get("channels") or {}).items():
        new = rename_key(key + ".", prefix)
        if new is not None:
            channels[new[:-1]] = value
    arch["channels"] = channels
    state = {}
    for key, value in work.state_dict().items():
        new = rename_key(key, prefix)
        if new is not None:
            state[new] = value
    return build_model(arch, state, model), removed
