"""Where benchmark results go: the machine that measured them, the JSON of a run, the dated results file.

Every bench command ends by calling `record(name, table)`: its printed table is appended, under a
heading naming the date, the CPU (model and SIMD flags), the core count and torch's version, to the
committed file bench/results/<name>.md. One section per dated run; the docs link to those files
instead of retyping figures. `write_json` keeps the full figures of the latest run (under runs/).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from pathlib import Path

import torch

from core.device import resolve_bf16
from core.train import TrainOptions

__all__ = ["RESULTS", "machine", "machine_line", "record", "write_json"]

LOGGER = logging.getLogger(__name__)
RESULTS = Path(__file__).resolve().parent / "results"
SIMD_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16")


def machine() -> dict:
    """The date, the CPU (model, SIMD flags), core count, torch version and what our bf16 default picks here."""
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
            "torch": torch.__version__}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags"))
        info["simd"] = " ".join(f for f in SIMD_FLAGS if f in flags)
    except (OSError, StopIteration):
        info["cpu"], info["simd"] = platform.processor() or "unknown", ""
    on, why = resolve_bf16(TrainOptions.bf16, torch.device("cpu"))
    info["ours_bf16"] = f"{'on' if on else 'off'} ({why})"  # what `core.train` with default options chooses here
    return info


def machine_line(meta: dict) -> str:
    """One line naming the machine: 'AMD EPYC, 2 cores, avx2 avx512f ..., torch 2.13.0+cpu'."""
    return (f"{meta.get('cpu', 'unknown CPU')}, {meta.get('cpus', '?')} cores, "
            f"{meta.get('simd') or 'no avx2/avx512'}, torch {meta.get('torch', torch.__version__)}")


def write_json(figures: dict, path: str | Path) -> Path:
    """Write a benchmark's figures as JSON (the folder made if needed)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str))
    LOGGER.info("figures written to %s", out)
    return out


def record(name: str, table: str, meta: dict | None = None, command: str = "",
           results: Path | None = None) -> Path:
    """Append one dated section (machine named) holding `table` to bench/results/<name>.md; return its path."""
    meta = meta or machine()
    out = (results or RESULTS) / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(f"# {name}\n\nOne section per run, newest last, appended by the bench command.\n")
    heading = f"\n## {meta['date'][:10]} · {machine_line(meta)}\n\n"
    ran = f"`{command}`\n\n" if command else ""
    with out.open("a") as f:
        f.write(heading + ran + table.rstrip() + "\n")
    LOGGER.info("results appended to %s", out)
    return out
