"""Checkpoints that hold plain data only and load with `torch.load(weights_only=True)`.

A checkpoint is a dict of tensors and plain Python values: the architecture dict rebuilds the
model (pruned models included), the state dicts fill it. Loading never unpickles code.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from core.argtypes import existing_file
from core.atomic import atomic_write
from core.cli import main_guard
from core.ema import unwrap
from core.model.yolo import Model

__all__ = ["FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "strip_checkpoint"]

FORMAT = "yolo-ep-1"


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (missing, not ours, or holding pickled code)."""


def _plain(value: Any) -> Any:
    """Deep-convert to plain Python data (tuples -> lists, numpy scalars -> float/int, Paths -> str)."""
    if isinstance(value, Mapping):
        return {(k if isinstance(k, (str, int)) else str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def _tensors(state: Mapping[str, torch.Tensor], half: bool = False) -> dict[str, torch.Tensor]:
    """CPU copies in the standard (NCHW-contiguous) layout, whatever memory format the model trained in."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu().clone(memory_format=torch.contiguous_format)
        out[k] = v.half() if half and v.dtype.is_floating_point else v
    return out


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with its per-parameter tensors NCHW-contiguous (a channels_last model's
    momentum buffers are channels_last; the trainer gives them the parameters' layout again on resume)."""
    sd = optimizer.state_dict()
    state = {i: {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
             for i, st in sd["state"].items()}
    return {**sd, "state": state}


def save_checkpoint(path: str | Path, model: nn.Module, *, ema: nn.Module | None = None, updates: int = 0,
                    hyp: Mapping | None = None, metrics: Mapping | None = None, epoch: int = -1,
                    best_fitness: float | None = None, optimizer: torch.optim.Optimizer | None = None,
                    train_opts: Mapping | None = None, half: bool = False, train_state: Mapping | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename, so a crash never leaves a torn file).

    `train_state` (a full checkpoint of a running training): what a resume needs beyond weights and optimizer
    to continue exactly (core.train: exact history, best epoch, counters, RNG states as tensors)."""
    model = unwrap(model)
    ckpt = {
        "format": FORMAT,
        "arch": _plain(copy.deepcopy(model.arch)),
        "names": _plain(list(getattr(model, "names", []))),
        "state_dict": _tensors(model.state_dict(), half),
        "ema": _tensors(ema.state_dict(), half) if ema is not None else None,
        "updates": int(updates),
        "hyp": _plain(dict(hyp or {})),
        "metrics": _plain(dict(metrics or {})),
        "epoch": int(epoch),
        "best_fitness": None if best_fitness is None else float(best_fitness),
        "optimizer": _optimizer_state(optimizer) if optimizer is not None else None,
        "train_opts": _plain(dict(train_opts or {})),
        "train_state": _plain(dict(train_state)) if train_state is not None else None,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }
    return atomic_write(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load with weights_only=True; a file holding pickled code is refused and nothing runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files: our message says it
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if not found:  # e.g. "Unsupported operand": a pickle or file of another kind, not code we refused
            raise CheckpointError(_unreadable(path)) from None
        # torch's own text advises weights_only=False: exactly what must not be done with this file
        raise CheckpointError(f"{path}: refused to load: it holds pickled code or classes (it references "
                              f"{found.group(1)}), not only tensors and plain data. Nothing was executed. "
                              "Checkpoints of this project never do; a YOLOv5/ultralytics .pt pickles its model "
                              "class and cannot be used here.") from None
    except Exception:  # noqa: BLE001 - truncated, empty, or another format: torch raises many types
        raise CheckpointError(_unreadable(path)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "arch" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no format '{FORMAT}' with an 'arch'); "
                              "a plain state_dict or another tool's file cannot be used here")
    return ckpt


def _unreadable(path: Path) -> str:
    return (f"{path}: not a readable PyTorch checkpoint ({path.stat().st_size} bytes): the file is truncated "
            "(a copy or download cut short?) or in another format")


def model_from_checkpoint(source: str | Path | Mapping, use_ema: bool = True, nc: int | None = None) -> nn.Module:
    """Rebuild the model from the checkpoint's architecture dict and load its (EMA) weights, fp32, eval mode."""
    ckpt = load_checkpoint(source) if not isinstance(source, Mapping) else source
    model = Model(copy.deepcopy(ckpt["arch"]))
    state = ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["state_dict"]
    try:
        model.load_state_dict({k: v.float() if v.dtype.is_floating_point else v for k, v in state.items()})
    except RuntimeError as e:
        where = source if not isinstance(source, Mapping) else "checkpoint"
        raise CheckpointError(f"{where}: weights do not match the architecture dict: {str(e)[:500]}") from None
    if ckpt.get("names"):
        model.names = list(ckpt["names"])
    return model.float().eval()


def strip_checkpoint(src: str | Path, dst: str | Path | None = None) -> Path:
    """Keep only what inference and fine-tuning need: EMA (else model) weights in FP16, no optimizer."""
    src = Path(src)
    ckpt = load_checkpoint(src)
    weights = ckpt["ema"] if ckpt.get("ema") else ckpt["state_dict"]
    ckpt["state_dict"] = {k: v.half() if v.dtype.is_floating_point else v for k, v in weights.items()}
    ckpt["ema"] = None
    ckpt["optimizer"] = None
    ckpt["train_state"] = None
    ckpt["updates"] = 0
    return atomic_write(Path(dst) if dst else src, lambda f: torch.save(ckpt, f))


@main_guard("core.checkpoint")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.checkpoint",
                                     description="Strip a checkpoint to EMA FP16 weights without optimizer state.")
    parser.add_argument("command", choices=["strip"])
    parser.add_argument("weights", nargs="+", type=existing_file, help="checkpoint file(s)")
    parser.add_argument("--out", default=None, help="output file (single input only; default: in place)")
    args = parser.parse_args(argv)
    if args.out and len(args.weights) > 1:
        parser.error("--out takes a single input checkpoint")
    for w in args.weights:
        before = Path(w).stat().st_size
        out = strip_checkpoint(w, args.out)
        print(f"{w}: {before / 1e6:.2f} MB -> {out} {out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
