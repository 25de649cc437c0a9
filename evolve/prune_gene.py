"""The pruning share as a gene: a prune-aware study (`prune_range: [LOW, HIGH]`).

Each searched trial prunes the study's warm start (the base run's best.pt or `weights:`) at its share of the
BN gammas (`prune_share`, steps of STEP: the channel stage of prune.pipeline, one-shot, no shortcut blocks
removed) and finetunes the pruned model with its hyp, so the trial's fitness and its measured cost are those of
a pruned model: the search trades accuracy for speed through the width of every layer as well as through the
hyp (and the image size, with `imgsz_range`). The base hyp's trials keep share 0: the unpruned reference.

Pruning needs trained BN gammas (a model from scratch has no ranking to cut by) and pays only when the cost is an
objective, so a prune-aware study needs a warm start and `objectives: [fitness, latency_ms | gflops]`.
The pruned start of each share is written once per study under <evolve dir>/pruned/ (atomically: the workers
share it), named by the start's digest, the share and the channel multiple, and the retrain phase prunes the
chosen trial's start the same way before its full-budget finetune.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from evolve.scale_gene import suggest_on_grid

__all__ = ["GENE", "STEP", "check_prune_range", "pruned_start", "round_to_for", "suggest_share"]

GENE = "prune_share"
STEP = 0.05  # share steps: a pruned start per step is cached, and finer steps move no measurable cost


def check_prune_range(value: Any, where: str, warm_start: bool, cost: str | None) -> list[float]:
    """`prune_range` checked against the rest of the study (errors name the field and value); [] = no gene.
    The sampler needs no check: a cost objective already rules out the GA (evolve/objectives.py)."""
    if not value:
        return []
    if (isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not 0 <= value[0] < value[1] < 1):
        raise ValueError(f"{where}: 'prune_range'={value!r} must be [LOW, HIGH] with 0 <= LOW < HIGH < 1 (the share "
                         f"of BN gammas each trial prunes, steps of {STEP})")
    if not warm_start:
        raise ValueError(f"{where}: 'prune_range'={list(value)} prunes a trained model: give the study a warm start "
                         f"(`base: {{epochs: N}}` or `weights:`); from scratch the BN gammas rank nothing")
    if cost is None:
        raise ValueError(f"{where}: 'prune_range'={list(value)} with objectives [fitness]: pruning only costs fitness "
                         f"unless its speed is an objective; use objectives: [fitness, latency_ms] (or gflops)")
    return [float(v) for v in value]


def suggest_share(trial: Any, prune_range: Sequence[float]) -> float:
    """The trial's share on the STEP grid inside the range (the range's ends snapped inward to the grid)."""
    return round(suggest_on_grid(trial, GENE, prune_range, STEP), 4)


def round_to_for(prune_section: dict, device: str) -> int:
    """The channel multiple the pruned starts keep: the study's `prune: {round_to: N}`, else the machine's
    (prune.rounding: the conv kernels' block on the latency device)."""
    from prune.rounding import resolve_round_to  # evolve imports prune where it is used (evolve/study.py's note)

    return resolve_round_to(prune_section.get("round_to", "auto"), device)[0]


def pruned_start(weights: str | Path, share: float, folder: Path, round_to: int) -> str:
    """The warm start pruned at `share` as a checkpoint path (the start itself at share 0); written once."""
    if share <= 0:
        return str(weights)
    from core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from core.digest import sha256_file
    from prune.masks import MaskOptions
    from prune.measure import zero_subnormals
    from prune.target import pruned_at

    path = Path(folder) / f"pruned-{sha256_file(weights)[:12]}-share{share:.2f}-r{round_to}.pt"
    if not path.is_file():
        ckpt = load_checkpoint(weights)
        model = pruned_at(model_from_checkpoint(ckpt).float().eval(), share, MaskOptions(round_to=round_to), 0)
        zero_subnormals(model)  # as prune.pipeline's stages: subnormals change no output but slow some CPUs
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, model, hyp=ckpt.get("hyp"), metrics={"prune_share": share}, epoch=-1)
    return str(path)
