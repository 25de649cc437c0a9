"""The command shared by the recorders of a run folder (bench.train_table, prune_table, study_table).

Each reads a run folder that a main job wrote (a training, a pruning pipeline, a study), prints its table and
appends it to bench/results/<name>.md (`--no-record`: print only); `--headline` also files its summary
figures in the README's headline table where the recorder has some.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from bench.record import publish

__all__ = ["RUN_FOLDERS", "run_table_main"]

# results name: (what the run folder is, the file its table is read from, the command that writes that file)
RUN_FOLDERS = {
    "train": ("a core.train run folder (runs/train/NAME)", "results.csv", "python -m core.train"),
    "prune": ("a prune.pipeline run folder (runs/prune/NAME)", "prune_results.csv", "python -m prune.pipeline"),
    "study": ("an evolve.study run folder (runs/study/NAME)", "summary.json", "python -m evolve.study"),
}


def run_table_main(name: str, module: str, table: Callable[[Path], str],
                   headline: Callable[[Path], dict[str, str]] | None = None,
                   argv: Sequence[str] | None = None) -> int:
    """`python -m <module> RUN [--headline] [--no-record]`: print RUN's table and record it as results/<name>.md;
    2 when RUN has no table yet."""
    run_help, needs, writer = RUN_FOLDERS[name]
    p = argparse.ArgumentParser(prog=f"python -m {module}",
                                description=f"a run folder's table into bench/results/{name}.md")
    p.add_argument("run", type=Path, help=run_help)
    if headline is not None:
        p.add_argument("--headline", action="store_true", help="also file the summary in the README's headline table")
    p.add_argument("--no-record", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    source = args.run / needs
    if not source.is_file() or source.stat().st_size == 0:
        print(f"{source}: not found or empty (run {writer} first)", file=sys.stderr)
        return 2
    wants_headline = headline is not None and args.headline
    publish(name, table(args.run), module, argv, keep=not args.no_record,
            headline=headline(args.run) if wants_headline else None)
    return 0
