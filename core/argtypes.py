"""argparse `type=` functions: a bad option value stops at parse time with a message naming the allowed values."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.device import DeviceError, parse_device_ids


__all__ = ["positive_int", "non_negative_int", "fraction", "unit_interval", "non_negative_float", "device",
           "existing_file", "existing_dir"]


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def fraction(text: str) -> float:
    """A share in [0, 1), e.g. the part of channels to prune."""
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def unit_interval(text: str) -> float:
    """A probability or threshold in [0, 1]."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1]")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
    return value


def device(text: str) -> str:
    """'cpu', a CUDA index '0' or indexes '0,1,2,3' (whether they exist is checked when the run starts)."""
    try:
        parse_device_ids(text)
    except DeviceError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, 0 or 0,1,2,3") from None
    return text


def existing_file(text: str) -> str:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder, expected a file")
    return text


def existing_dir(text: str) -> str:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
