"""Training hyperparameters: YOLOv5's keys, defaults from studies/hyp/scratch.yaml, validation."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from core.yaml_file import load_yaml

__all__ = ["DEFAULT_HYP_FILE", "HYP_KEYS", "HYP_RANGES", "HypError", "default_hyp", "load_hyp", "unused_keys"]

DEFAULT_HYP_FILE = Path(__file__).resolve().parent.parent / "studies" / "hyp" / "scratch.yaml"

# Allowed closed ranges for every key. A value outside is an error naming the key.
HYP_RANGES: dict[str, tuple[float, float]] = {
    "lr0": (1e-8, 1.0), "lrf": (1e-4, 1.0), "momentum": (0.0, 0.999), "weight_decay": (0.0, 0.1),
    "warmup_epochs": (0.0, 100.0), "warmup_momentum": (0.0, 0.999), "warmup_bias_lr": (0.0, 1.0),
    "box": (0.0, 100.0), "cls": (0.0, 100.0), "cls_pw": (0.01, 100.0), "obj": (0.0, 100.0),
    "obj_pw": (0.01, 100.0), "iou_t": (0.0, 1.0), "anchor_t": (1.0, 100.0), "anchors": (1.0, 20.0),
    "fl_gamma": (0.0, 10.0), "dfl": (0.0, 100.0), "hsv_h": (0.0, 1.0), "hsv_s": (0.0, 1.0), "hsv_v": (0.0, 1.0),
    "degrees": (0.0, 180.0), "translate": (0.0, 1.0), "scale": (0.0, 0.999), "shear": (0.0, 90.0),
    "perspective": (0.0, 0.01), "flipud": (0.0, 1.0), "fliplr": (0.0, 1.0), "mosaic": (0.0, 1.0),
    "mixup": (0.0, 1.0), "copy_paste": (0.0, 1.0),
}
HYP_KEYS = tuple(HYP_RANGES)
# Keys a head's loss never reads (core/loss.py, core/loss_af.py): the anchor-free head has no anchors and no
# objectness, the anchor-based one no DFL term.
_UNUSED = {True: ("anchors", "anchor_t", "obj", "obj_pw", "cls_pw", "fl_gamma"), False: ("dfl",)}


class HypError(ValueError):
    """A hyperparameter file or dict holds an unknown key or an invalid value."""


def unused_keys(anchor_free: bool) -> tuple[str, ...]:
    """The hyp keys the model's head and loss ignore (anchor-free head: DetectAF; else Detect)."""
    return _UNUSED[bool(anchor_free)]


def default_hyp() -> dict[str, float]:
    with open(DEFAULT_HYP_FILE) as f:
        return {k: float(v) for k, v in yaml.safe_load(f).items()}


def load_hyp(source: str | Path | Mapping[str, Any] | None = None) -> dict[str, float]:
    """Return a full, validated hyp dict: defaults overridden by `source` (a yaml file or a dict).

    A subset of keys is fine. Unknown keys and out-of-range values raise HypError naming the key
    (and the file). Non-hyp header keys written by evolution (`_trial`, `_fitness`...) and
    keys starting with '_' are ignored.
    """
    where = "hyp dict"
    if source is None:
        given: Mapping[str, Any] = {}
    elif isinstance(source, Mapping):
        given = source
    else:
        where = str(source)
        given = load_yaml(source, "hyp file", error=HypError)
    hyp = default_hyp()
    for key, value in given.items():
        if str(key).startswith("_"):
            continue
        if key not in HYP_RANGES:
            raise HypError(f"{where}: unknown hyp key '{key}' (allowed: {', '.join(HYP_KEYS)})")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise HypError(f"{where}: hyp '{key}' must be a number, got {value!r}") from None
        low, high = HYP_RANGES[key]
        if not (low <= number <= high):
            raise HypError(f"{where}: hyp '{key}'={value!r} is outside the allowed range [{low}, {high}]")
        hyp[key] = number
    return hyp
