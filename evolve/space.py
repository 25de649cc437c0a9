"""The search space: one gene (gain, low, high, log, int) per hyp, loaded and checked from studies/space.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from core.hyp import HYP_RANGES, unused_keys
from evolve.yaml_mapping import read_mapping

DEFAULT_SPACE_FILE = Path(__file__).resolve().parent.parent / "studies" / "space.yaml"


class SpaceError(ValueError):
    """The search-space file holds an unknown key or an invalid gene."""


@dataclass(frozen=True)
class Gene:
    """One hyp in the search: gain 0 = fixed at the base value; bounds apply to every sampler."""

    name: str
    gain: float
    low: float
    high: float
    log: bool = False
    int: bool = False

    @property
    def evolved(self) -> bool:
        return self.gain > 0

    def distribution(self) -> BaseDistribution:
        if self.int:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def clip(self, value: float) -> float | int:
        """Clip to [low, high]; integer genes are rounded."""
        value = min(max(float(value), self.low), self.high)
        return int(round(value)) if self.int else value


Space = dict[str, Gene]


def _gene(name: str, spec: Any, where: str) -> Gene:
    if name not in HYP_RANGES:
        raise SpaceError(f"{where}: unknown hyp '{name}' (allowed: {', '.join(HYP_RANGES)})")
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{where}: '{name}' must be a mapping like {{gain: 1, low: 0, high: 1}}, got {spec!r}")
    unknown = set(spec) - {"gain", "low", "high", "log", "int"}
    if unknown:
        raise SpaceError(f"{where}: '{name}' has unknown field(s) {sorted(unknown)} (allowed: gain, low, high, log, int)")
    try:
        gain, low, high = float(spec["gain"]), float(spec["low"]), float(spec["high"])
    except KeyError as e:
        raise SpaceError(f"{where}: '{name}' is missing field {e}") from None
    except (TypeError, ValueError):
        raise SpaceError(f"{where}: '{name}' gain/low/high must be numbers, got {dict(spec)}") from None
    log, is_int = bool(spec.get("log", False)), bool(spec.get("int", False))
    if gain < 0:
        raise SpaceError(f"{where}: '{name}' gain={gain} must be >= 0")
    if not low < high:
        raise SpaceError(f"{where}: '{name}' needs low < high, got low={low} high={high}")
    lo_ok, hi_ok = HYP_RANGES[name]
    if low < lo_ok or high > hi_ok:
        raise SpaceError(f"{where}: '{name}' bounds [{low}, {high}] leave the allowed range [{lo_ok}, {hi_ok}]")
    if log and low <= 0:
        raise SpaceError(f"{where}: '{name}' has log: true, so low must be > 0, got {low}")
    if is_int and (low != int(low) or high != int(high)):
        raise SpaceError(f"{where}: '{name}' has int: true, so low/high must be whole numbers, got {low}, {high}")
    return Gene(name, gain, low, high, log, is_int)


def load_space(source: str | Path | Mapping[str, Any] | None = None) -> Space:
    """Load a space file (default studies/space.yaml) or dict into {hyp: Gene}, in the file's order.

    Hyps the file does not list are fixed at the base hyp's value.
    """
    where = "space dict"
    if source is None:
        source = DEFAULT_SPACE_FILE
    if not isinstance(source, Mapping):
        where = str(source)
        source = read_mapping(source, SpaceError, "search-space file", "a mapping of hyp -> {gain, low, high}")
    return {str(k): _gene(str(k), v, where) for k, v in source.items()}


def evolved(space: Space) -> list[Gene]:
    return [g for g in space.values() if g.evolved]


def distributions(space: Space) -> dict[str, BaseDistribution]:
    """Optuna distributions of the evolved genes (the ones every trial suggests)."""
    return {g.name: g.distribution() for g in evolved(space)}


def check_base(space: Space, base_hyp: Mapping[str, float], where: str = "base hyp") -> None:
    """The base hyp is the first trial, so every evolved gene's base value must lie inside its bounds."""
    for g in evolved(space):
        v = float(base_hyp[g.name])
        if not g.low <= v <= g.high:
            raise SpaceError(f"{where}: '{g.name}'={v} is outside the search bounds [{g.low}, {g.high}]; "
                             f"widen the space or set gain: 0")
        if g.int and v != int(v):
            raise SpaceError(f"{where}: '{g.name}'={v} must be a whole number (int gene)")


def check_head(space: Space, anchor_free: bool, where: str = "space file") -> None:
    """Only genes the model's loss reads may be searched: the anchor-free head (DetectAF) has no anchors and no
    objectness, the anchor-based Detect no DFL term (`dfl`): core.hyp.unused_keys."""
    bad = [g.name for g in evolved(space) if g.name in unused_keys(anchor_free)]
    if not bad:
        return
    if anchor_free:
        raise SpaceError(f"{where}: the model has the anchor-free head (DetectAF), which has no anchors and no "
                         f"objectness, so {', '.join(bad)} would be searched for nothing: set their gain to 0 "
                         f"(studies/space-adamw-af.yaml is a space for this head; it searches box, cls and dfl)")
    raise SpaceError(f"{where}: 'dfl' is the anchor-free head's DFL gain and the model's Detect head does not use "
                     f"it: set its gain to 0")


def base_params(space: Space, base_hyp: Mapping[str, float]) -> dict[str, float | int]:
    """The base hyp as trial params (evolved genes only), typed like the distributions."""
    return {g.name: (int(base_hyp[g.name]) if g.int else float(base_hyp[g.name])) for g in evolved(space)}


def full_hyp(params: Mapping[str, Any], base_hyp: Mapping[str, float]) -> dict[str, float]:
    """Base hyp overridden by a trial's params (fixed genes keep their base value)."""
    hyp = {k: float(v) for k, v in base_hyp.items()}
    hyp.update({k: float(v) for k, v in params.items()})
    return hyp
