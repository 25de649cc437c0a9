"""`python -m evolve --study studies/quick.yaml [--gpus 0,1,2,3 | --gpus cpu --workers 2] [--trials N] ...`
`python -m evolve status NAME [--storage URL]`: where the study stands (trials, best, noise floor, ETA).

Evolves the study's hyperparameters; every flag overrides the study file's field of the same name.
Re-running the same command resumes: --trials N means N finished trials in total.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna

from evolve.budget import parse_timeout, timeout_deadline
from evolve.launcher import launch
from evolve.samplers import SAMPLERS
from evolve.status import main as status_main
from evolve.study_config import PRUNERS, REPO, StudyError, load_study
from evolve.space import SpaceError
from core.hyp import HypError
from core import argtypes as t
from core.cli import main_guard

DEFAULT_STUDY = "studies/quick.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m evolve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=DEFAULT_STUDY, help=f"study file (default {DEFAULT_STUDY})")
    ap.add_argument("--gpus", type=t.device, default=None, help="'cpu' or GPU ids '0,1,2,3': one worker per GPU")
    ap.add_argument("--workers", type=t.positive_int, default=None, help="worker processes on CPU")
    ap.add_argument("--workers-per-gpu", type=t.positive_int, default=None,
                    help="worker processes per GPU (default 1; 2-3 when a small model leaves the GPU idle)")
    ap.add_argument("--trials", type=t.non_negative_int, default=None, help="finished trials in total (resume-safe)")
    ap.add_argument("--timeout", type=parse_timeout, default=None, metavar="TIME",
                    help="start no trial after TIME (seconds, or 90m, 2h) from now; running trials finish. The study "
                    "file's budget: {hours: H} bounds the study as a whole (docs/evolve.md)")
    ap.add_argument("--sampler", choices=SAMPLERS, default=None)
    ap.add_argument("--pruner", choices=PRUNERS, default=None)
    ap.add_argument("--storage", default=None,
                    help="Optuna RDB URL (sqlite:///x.db, postgresql://user:pass@host/db); default: journal file")
    ap.add_argument("--artifacts", default=None, metavar="DIR",
                    help="folder (or s3://bucket/prefix) every machine reaches: the base run is shared through it")
    ap.add_argument("--name", default=None, help="study name (outputs in runs/evolve/NAME)")
    ap.add_argument("--epochs", type=t.positive_int, default=None, help="epochs per trial")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--imgsz", type=t.positive_int, default=None)
    ap.add_argument("--batch", type=t.positive_int, default=None)
    ap.add_argument("--data", type=t.existing_file, default=None, help="data yaml (default: the study's, or the built-in dataset)")
    ap.add_argument("--model", type=t.existing_file, default=None, help="model yaml")
    ap.add_argument("--hyp", type=t.existing_file, default=None, help="base hyp yaml (first trial; value of fixed hyps)")
    ap.add_argument("--fit", default=None, help=argparse.SUPPRESS)  # 'module:function' replacing core.train.fit
    return ap.parse_args(argv)


@main_guard("evolve", interrupted="interrupted: finished trials are kept in the study; the same command resumes")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["status"]:  # python -m evolve status NAME: read the storage, start nothing
        return status_main(argv[1:])
    args = parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("gpus", "workers", "workers_per_gpu", "trials", "sampler", "pruner", "storage", "artifacts", "name",
                                               "epochs", "seed", "imgsz", "batch", "data", "model", "hyp")}
    try:
        study = Path(args.study)
        if not study.exists() and (REPO / study).exists():  # studies/... works from any folder
            study = REPO / study
        cfg = load_study(study, overrides)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return launch(cfg, cfg.storage, fit_spec=args.fit, deadline=timeout_deadline(args.timeout))
    except (StudyError, SpaceError, HypError, FileNotFoundError) as e:
        print(f"evolve: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the workers started (preflight, base run): nothing to stop
        print("interrupted: run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
