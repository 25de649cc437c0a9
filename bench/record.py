"""Where benchmark results go: the machine that measured them, the JSON of a run, the dated results file.

Every bench command ends by calling `record(name, table, meta, command)` (unless run with `--no-record`):
its printed markdown table is appended to the committed file bench/results/<name>.md as one section,

    ## <date> <time> · <CPU model>, <cores> cores, <SIMD flags>, torch <version>

    `<the command line>` at <git commit>

    <the table>

one section per run, newest last; a file is only ever appended to, never rewritten. The docs link to these
files instead of retyping figures. `headline={label: figure}` also files those few figures in
bench/results/headline.json (bench.headline), from which the README's headline table is rendered; recording
into the repository's own results folder rewrites that table at once. `write_json` keeps the full figures of
the latest run (under runs/, not committed).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

import torch

from bench import headline as headline_file
from core.device import resolve_bf16
from core.train import TrainOptions

__all__ = ["publish", "RESULTS", "command_line", "machine", "machine_line", "markdown_table", "record", "section", "write_json"]

LOGGER = logging.getLogger(__name__)
RESULTS = Path(__file__).resolve().parent / "results"  # where record() writes by default (tests point it elsewhere)
REPO = RESULTS.parents[1]
SIMD_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16")


def machine() -> dict:
    """The date, the CPU (model, SIMD flags), core count, torch version, git commit and our bf16 default here."""
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
            "torch": torch.__version__, "commit": git_commit()}
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


def git_commit() -> str:
    """The checkout's short commit, '+dirty' when tracked files changed; '' outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "-uno") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_line(meta: dict) -> str:
    """One line naming the machine: 'AMD EPYC, 2 cores, avx2 avx512f ..., torch 2.13.0+cpu'."""
    return (f"{meta.get('cpu', 'unknown CPU')}, {meta.get('cpus', '?')} cores, "
            f"{meta.get('simd') or 'no avx2/avx512'}, torch {meta.get('torch', torch.__version__)}")


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command as a user would type it: 'python -m bench.engine --batches 20' (argv None: this process's)."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def publish(name: str, text: str, module: str, argv: Sequence[str] | None, keep: bool = True,
            headline: dict[str, str] | None = None) -> None:
    """Print a bench command's table and, unless `keep` is False (its --no-record), record it as `module argv`."""
    print(text)
    if keep:
        record(name, text, command=command_line(module, argv), headline=headline)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A markdown table; cells are str()-ed, so format numbers before."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_json(figures: dict, path: str | Path) -> Path:
    """Write a benchmark's figures as JSON (the folder made if needed)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str))
    LOGGER.info("figures written to %s", out)
    return out


def record(name: str, table: str, meta: dict | None = None, command: str = "",
           results: Path | None = None, headline: dict[str, str] | None = None) -> Path:
    """Append one dated section (machine named) holding `table` to <results>/<name>.md; return its path.

    results defaults to the repository's bench/results. `headline` ({label: figure}) goes to
    <results>/headline.json under `name`; in the repository's folder the README's table is rewritten too."""
    meta = meta or machine()
    root = Path(results) if results is not None else RESULTS
    out = root / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(f"# {name}\n\nOne section per run, newest last (appended by bench.record).\n")
    with out.open("a") as f:
        f.write(section(table, meta, command))
    LOGGER.info("results appended to %s", out)
    if headline:
        headline_file.update(name, headline, meta["date"][:10], machine_line(meta), command,
                             root / headline_file.HEADLINE_JSON.name)
        if root.resolve() == headline_file.HEADLINE_JSON.parent:  # the committed folder: the README follows it
            _refresh_readme()
    return out


def section(table: str, meta: dict, command: str = "") -> str:
    """The text record() appends: a blank line, the heading, the command line, the table."""
    when = meta["date"].replace("T", " ")[:16]
    at = f" at {meta['commit']}" if meta.get("commit") else ""
    ran = f"`{command}`{at}\n\n" if command else ""
    return f"\n## {when} · {machine_line(meta)}\n\n{ran}{table.rstrip()}\n"


def _refresh_readme() -> None:
    """Re-render the README's headline table; a README without its markers is left alone (logged)."""
    try:
        if headline_file.write_readme(headline_file.README, headline_file.HEADLINE_JSON):
            LOGGER.info("README.md's headline table rewritten (bench.headline)")
    except (OSError, headline_file.HeadlineError) as e:
        LOGGER.warning("README.md's headline table not rewritten: %s", e)
