"""The model's width and depth multiples as genes: `width_range` / `depth_range` in a study from scratch.

YOLOv5 scales one layout to n/s/m/l/x with two numbers of its model yaml: `width_multiple` (every layer's
channels) and `depth_multiple` (every C3's bottleneck repeats). As genes they let a two-objective study trade
accuracy for speed through the architecture itself: each searched trial trains the study's model yaml rewritten
with its multiples (written once per pair under <evolve dir>/models/, named by them); the base hyp's trials keep
the yaml's own multiples, the reference. The multiples are drawn on a grid (STEPS): channels are rounded to
multiples of 8 and repeats to whole blocks, so finer steps would train the same network under another name.

A warm start (`base:` or `weights:`) fixes the architecture its weights fit, so these genes need trials from
scratch; with a warm start, `prune_range` (evolve/prune_gene.py) is the gene that narrows the layers.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from core.yaml_file import load_yaml

__all__ = ["GENES", "STEPS", "check_scale_ranges", "scaled_model", "suggest_on_grid", "trial_multiples"]

GENES = ("width_multiple", "depth_multiple")
RANGE_FIELDS = {"width_range": "width_multiple", "depth_range": "depth_multiple"}
# binary fractions, exact in floats (Optuna checks a range is a whole number of steps): 1/32 of the width moves a
# 64-wide layer by 2 channels (the 8-channel rounding merges some); 1/8 of the depth moves the 3-, 6- and 9-block
# C3s by under one block each
STEPS = {"width_multiple": 1 / 32, "depth_multiple": 1 / 8}
HIGHEST = 2.0  # above YOLOv5x's 1.25 / 1.33: a range past it is a typo, not a model this tool trains on a CPU


def check_scale_ranges(ranges: Mapping[str, Any], where: str, warm_start: bool, sampler: str) -> dict[str, list]:
    """{field: [LOW, HIGH]} for `width_range` and `depth_range` as given (each [] = not a gene), checked against
    the rest of the study; errors name the field and value."""
    out = {}
    for name, value in ranges.items():
        if not value:
            out[name] = []
            continue
        if (isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or not 0 < value[0] < value[1] <= HIGHEST):
            raise ValueError(f"{where}: '{name}'={value!r} must be [LOW, HIGH] with 0 < LOW < HIGH <= {HIGHEST} (the "
                             f"model's {RANGE_FIELDS[name]}, steps of {STEPS[RANGE_FIELDS[name]]:.4g})")
        if warm_start:
            raise ValueError(f"{where}: '{name}'={list(value)} changes the architecture, which a warm start "
                             f"(`base:` or `weights:`) fixes: search it from scratch, or narrow a warm start's "
                             f"layers with `prune_range`")
        if sampler == "ga":
            raise ValueError(f"{where}: '{name}'={list(value)} with sampler 'ga': the GA evolves the hyp space "
                             f"only; use tpe, nsga2 or random")
        out[name] = [float(v) for v in value]
    return out


def suggest_on_grid(trial: Any, name: str, bounds: Sequence[float], step: float) -> float:
    """The trial's value of gene `name` on the `step` grid inside `bounds` (the ends snapped inward to the grid;
    a range narrower than one step gives its lower grid point)."""
    low = math.ceil(round(bounds[0] / step, 6)) * step
    high = math.floor(round(bounds[1] / step, 6)) * step
    return round(trial.suggest_float(name, round(low, 6), round(max(high, low), 6), step=step), 6)


def model_multiples(model_yaml: str | Path) -> dict[str, float]:
    """The yaml's own width and depth multiples (1.0 where it names none, as core.model.yolo reads it)."""
    arch = load_yaml(model_yaml)
    return {gene: float(arch.get(gene, 1.0)) for gene in GENES}


def trial_multiples(trial: Any, ranges: Mapping[str, list], model_yaml: str | Path, base: bool) -> dict[str, float]:
    """The trial's width and depth multiples: drawn where a range makes them genes, the yaml's own otherwise
    and for the base hyp's trials. {} when neither is searched."""
    if not any(ranges.values()):
        return {}
    own = model_multiples(model_yaml)
    out = {}
    for field_name, gene in RANGE_FIELDS.items():
        bounds = ranges.get(field_name)
        out[gene] = own[gene] if base or not bounds else suggest_on_grid(trial, gene, bounds, STEPS[gene])
    return out


def scaled_model(model_yaml: str | Path, multiples: Mapping[str, float], folder: Path) -> str:
    """The study's model yaml with `multiples` in place of its own, as a file (the yaml itself when they are its
    own); written once per pair, atomically (the workers share it)."""
    model_yaml = Path(model_yaml)
    if not multiples or multiples == model_multiples(model_yaml):
        return str(model_yaml)
    w, d = multiples["width_multiple"], multiples["depth_multiple"]
    path = Path(folder) / f"{model_yaml.stem}-w{w:.4f}-d{d:.4f}.yaml"
    if not path.is_file():
        arch = {**load_yaml(model_yaml), "width_multiple": w, "depth_multiple": d}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        header = f"# {model_yaml.name} at width_multiple {w:g}, depth_multiple {d:g} (evolve/scale_gene.py)\n"
        tmp.write_text(header + _yaml_text(arch))
        os.replace(tmp, path)
    return str(path)


def _yaml_text(arch: Mapping[str, Any]) -> str:
    """The architecture as YOLOv5 writes its yamls: one flow-style row per layer, so the file reads like its source."""
    def flow(value: Any) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
        return text.removesuffix("...\n").strip()  # a bare scalar is dumped as a document with an end marker

    lines = []
    for key, value in arch.items():
        if key in ("backbone", "head") and isinstance(value, list):
            lines += [f"{key}:"] + [f"  - {flow(row)}" for row in value]
        else:
            lines.append(f"{key}: {flow(value)}")
    return "\n".join(lines) + "\n"
