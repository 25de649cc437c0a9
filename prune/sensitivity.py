"""`python -m prune.sensitivity`: how much mAP50-95 each prunable layer loses when it alone is pruned, cheaply.

For each coupling group (convs that share one mask: prune/graph.py) and each share in `--shares`, the group's
lowest-scoring channels (max |gamma| over its members; at least one channel kept) get gamma = 0, the keep-size
view of pruning (prune.surgery.zero_pruned with the betas kept, which the compact model folds into the next
layer), and the model is scored on a fixed subset of the val set; the group's gammas are then restored.
drop = unmasked mAP - masked mAP. No finetune: a ranking of where pruning hurts at once, not a prediction of
the finetuned mAP. A share that masks nothing changes no weight, so its drop is 0 exactly.

sensitivity.csv: one row per (group, share): group (its first conv), convs, share, channels, masked, mAP50-95,
drop. `load_sensitivity` reads it back as {conv: mean drop over the shares}, what `--allocation sensitivity`
of prune.pipeline weights the global threshold with (prune/allocation.py).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from core import argtypes as t
from core.atomic import atomic_write
from core.checkpoint import model_from_checkpoint
from core.cli import main_guard
from core.data.config import load_data_config
from core.data.loader import create_dataloader
from core.hyp import load_hyp
from core.val import validate
from prune.allocation import gammas
from prune.graph import trace
from prune.surgery import zero_pruned

__all__ = ["DEFAULT_SHARES", "SensitivityError", "group_keep", "load_sensitivity", "measure_sensitivity", "val_subset"]

LOGGER = logging.getLogger(__name__)
DEFAULT_SHARES = (0.25, 0.5, 0.75)
COLUMNS = ["group", "convs", "share", "channels", "masked", "mAP50-95", "drop"]


class SensitivityError(ValueError):
    """A sensitivity file or option cannot be used."""


def group_keep(score: torch.Tensor, share: float) -> torch.Tensor:
    """Keep-mask of one group at `share`: all but the floor(share x C) lowest scores, at least one channel kept."""
    n = score.numel()
    k = max(1, n - math.floor(share * n))
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.argsort(score, descending=True, stable=True)[:k]] = True
    return keep


@torch.no_grad()
def measure_sensitivity(model: nn.Module, evaluate: Callable[[nn.Module], float], shares: Sequence[float],
                        progress: bool = True) -> pd.DataFrame:
    """One row per (group, share) of `model`'s coupling groups: `evaluate`'s score with only that group masked."""
    graph = trace(model)
    g = gammas(graph)
    base = float(evaluate(model))
    groups = graph.groups()
    rows = []
    bar = tqdm(list(itertools.product(groups, shares)), desc="sensitivity", disable=not progress)
    for grp, share in bar:
        keep = group_keep(torch.stack([g[n] for n in grp]).max(0).values, share)
        saved = {n: graph.convs[n].bn.weight.detach().clone() for n in grp}
        if not keep.all():  # zero_pruned over the whole graph: every other conv keeps all of its channels
            zero_pruned(graph, {n: keep if n in grp else torch.ones_like(g[n], dtype=torch.bool) for n in g},
                        betas=False)
        score = base if keep.all() else float(evaluate(model))
        for n, w in saved.items():
            graph.convs[n].bn.weight.copy_(w)
        rows.append({"group": grp[0], "convs": " ".join(grp), "share": share, "channels": keep.numel(),
                     "masked": int((~keep).sum()), "mAP50-95": score, "drop": base - score})
    return pd.DataFrame(rows, columns=COLUMNS)


def load_sensitivity(path: str | Path) -> dict[str, float]:
    """{conv: mean drop over the measured shares} from a sensitivity.csv; SensitivityError naming what is wrong."""
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise SensitivityError(f"--sensitivity {path}: cannot be read ({e})") from None
    missing = [c for c in ("convs", "drop") if c not in df.columns]
    if missing:
        raise SensitivityError(f"--sensitivity {path}: no column {', '.join(missing)} (a prune.sensitivity csv has "
                               f"{', '.join(COLUMNS)})")
    bad = df[pd.to_numeric(df["drop"], errors="coerce").isna()]
    if len(bad):
        raise SensitivityError(f"--sensitivity {path}, line {bad.index[0] + 2}: drop {bad['drop'].iloc[0]!r} "
                               f"is not a number")
    drops: dict[str, list[float]] = {}
    for convs, drop in zip(df["convs"], df["drop"].astype(float)):
        for conv in str(convs).split():
            drops.setdefault(conv, []).append(drop)
    return {conv: sum(v) / len(v) for conv, v in drops.items()}


def val_subset(data: str | None, imgsz: int, images: int, batch_size: int = 16) -> list:
    """The first `images` val images (whole batches), loaded once: every masked model is scored on the same."""
    cfg = load_data_config(data)
    loader, _ = create_dataloader(cfg["val"], imgsz, batch_size, load_hyp(None), augment=False, cache="ram",
                                  workers=0, nc=cfg["nc"], prefix="val: ")
    return list(itertools.islice(loader, max(1, math.ceil(images / batch_size))))


@main_guard("prune.sensitivity")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prune.sensitivity", description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=t.existing_file, required=True, help="the trained (or sparse) checkpoint")
    p.add_argument("--data", type=t.existing_file, help="data yaml (default: the built-in dataset)")
    p.add_argument("--imgsz", type=t.positive_int, default=160)
    p.add_argument("--images", type=t.positive_int, default=64, help="val images scored per masked model")
    p.add_argument("--shares", type=t.fraction, nargs="+", default=list(DEFAULT_SHARES))
    p.add_argument("--threads", type=t.positive_int, default=1)
    p.add_argument("--out", default="runs/sensitivity/sensitivity.csv")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = model_from_checkpoint(args.weights).float().eval()
    batches = val_subset(args.data, args.imgsz, args.images)

    def evaluate(m: nn.Module) -> float:
        return float(validate(m, batches, progress=False)["mAP50-95"])

    df = measure_sensitivity(model, evaluate, args.shares, args.progress)
    out = atomic_write(Path(args.out), df.to_csv(index=False))
    worst = df.groupby("group")["drop"].mean().sort_values(ascending=False)
    print(f"most sensitive groups (mean mAP50-95 drop over shares {', '.join(map(str, args.shares))}):")
    for name, drop in worst.head(5).items():
        print(f"  {name}: {drop:+.4f}")
    print(f"{len(df)} masked models scored on {sum(len(b[0]) for b in batches)} val images; table {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
