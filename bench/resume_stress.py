"""Resume is exact: `python -m bench.resume_stress --runs N` interrupts seeded CPU trainings at random moments,
resumes each until it is done, and counts how many end where the uninterrupted run ends.

A run trains the small CPU model (studies/models/yolov5-cpu.yaml) on a tiny generated set, in a child
process (`core.train`'s command) that injects faults at seeded moments:
  batch    the signal at the k-th training batch of the process (mid-epoch)
  save     the k-th checkpoint write (torch.save) writes half its bytes, then the signal (mid-write)
  cleanup  SIGINT at the k-th batch, then the signal during the cleanup that keeps resume.pt, when its j-th
           file write is done but not yet renamed (a second Ctrl-C, torchrun's forwarded one, a kill)
  time     the parent sends the signal after t seconds (lands anywhere: setup, an epoch, a write, the end)
with SIGINT, SIGTERM or SIGKILL. After each cut the same command runs again (`--resume RUN` once a
checkpoint exists) until one exits 0. The run is exact when results.csv (every column but the times) and
every tensor of last.pt and best.pt equal the uninterrupted run's, bit for bit, and nothing is left
behind (resume.pt, temp files). The loader's passes are functions of (seed, epoch), so workers 0 and 1
train the same run: one reference serves both.

`--no-record`: print only; otherwise the table is appended to bench/results/resume_stress.md.
tests/core/test_crash_safety.py runs a fixed plan of each kind through the same functions.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import random
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from bench.record import markdown_table, publish
from core.checkpoint import load_checkpoint
from core.model.yolo import Model
from core.run_dir import RESULT_COLUMNS

__all__ = ["TIME_COLUMNS", "Fault", "compare_runs", "main", "train_args", "train_until_done", "write_tiny_data"]

REPO = Path(__file__).resolve().parents[1]
MODEL = str(REPO / "studies" / "models" / "yolov5-cpu.yaml")
TIME_COLUMNS = ("seconds", "train_seconds", "val_seconds")  # wall clocks: the only columns allowed to differ
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
KINDS = ("batch", "save", "cleanup", "time")
# how a cut process ends: an interrupt (main_guard's 130), a kill, SIGTERM before fit's handler, SIGINT before
# main_guard's (Python re-raises an uncaught KeyboardInterrupt as SIGINT)
CUT = (130, -signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT)


@dataclass(frozen=True)
class Fault:
    """One interruption: `kind` (KINDS), the signal's name, `at` (batch, write or seconds) and, for cleanup,
    `then`: before the rename of which of the cleanup's writes (1 = resume.pt, 2 = best.pt's strip, 3 =
    last.pt's; 1 = best.pt's when last.pt is already stripped and resume.pt kept)."""

    kind: str
    sig: str
    at: float
    then: int = 1

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.sig}:{self.at}:{self.then}"

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        kind, sig, at, then = spec.split(":")
        return cls(kind, sig, float(at), int(then))


# --- the child: core.train's command with a fault injected ----------------------------------------------

def _child(spec: str, argv: list[str]) -> int:
    """Run `python -m core.train ARGV` with the fault `spec` ('none' for none) armed in this process, through
    public hooks only: a global module forward hook counts training batches (the Model's forward in training
    mode), torch.save the checkpoint writes, os.replace the renames that end every atomic write."""
    fault = Fault.parse(spec) if spec != "none" else None
    if fault is not None:
        _arm(fault)
    sys.argv = ["core.train", *argv]
    try:  # `python -m core.train` runs core.train_cli's main
        runpy.run_module("core.train_cli", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _arm(fault: Fault) -> None:
    sig = SIGNALS[fault.sig]
    batches, saves, renames, cleaning = [0], [0], [0], [False]

    def count_batch(module, args):
        if isinstance(module, Model) and module.training:
            batches[0] += 1
            if batches[0] == int(fault.at) and fault.kind in ("batch", "cleanup"):
                cleaning[0] = fault.kind == "cleanup"  # from here on, the writes are the interrupt's cleanup
                os.kill(os.getpid(), signal.SIGINT if fault.kind == "cleanup" else sig)
    register_module_forward_pre_hook(count_batch)

    save = torch.save

    def cut_save(obj, f, *args, **kwargs):
        saves[0] += 1
        if fault.kind == "save" and saves[0] == int(fault.at) and hasattr(f, "write"):
            buf = io.BytesIO()
            save(obj, buf)
            f.write(buf.getvalue()[: buf.tell() // 2])
            f.flush()
            os.kill(os.getpid(), sig)
        return save(obj, f, *args, **kwargs)
    torch.save = cut_save

    replace = os.replace

    def cleanup_rename(src, dst, *args, **kwargs):
        if cleaning[0]:
            renames[0] += 1
            if renames[0] == fault.then:  # the temp file is written, not yet renamed
                os.kill(os.getpid(), sig)
        return replace(src, dst, *args, **kwargs)
    os.replace = cleanup_rename


# --- the parent: train until done, compare ------------------------------------------------------------

def write_tiny_data(root: Path) -> str:
    """A data yaml for a generated 6-class shapes set of 32 train / 8 val images (made on first use)."""
    root.mkdir(parents=True, exist_ok=True)
    yaml_file = root / "tiny.yaml"
    yaml_file.write_text("path: shapes\ntrain: images/train\nval: images/val\n"
                         "names: [circle, square, triangle, star, cross, ring]\n"
                         "synthetic: {seed: 1, n_train: 32, n_val: 8, imgsz: 96}\n")
    return str(yaml_file)


def train_args(data: str, project: Path, name: str, epochs: int, workers: int, seed: int = 3) -> list[str]:
    """core.train's arguments for a tiny seeded run with a fixed thread count (bit-exact on CPU), without the
    run folder's pictures and trackers where this trainer has them (they cost seconds and change no number)."""
    return ["--data", data, "--model", MODEL, "--epochs", str(epochs), "--batch-size", "8", "--imgsz", "64",
            "--workers", str(workers), "--nbs", "8", "--close-mosaic", "1", "--seed", str(seed), "--threads", "1",
            "--project", str(project), "--name", name, "--exist-ok", "--no-progress", "--no-plots",
            "--tensorboard", "off"]


def train_until_done(args: list[str], run: Path, faults: Sequence[Fault], timeout: float = 600,
                     max_clean: int = 3, after_cut: Callable[[Path], None] | None = None) -> list[tuple[str, int]]:
    """Run the child with each fault in turn, then without, until one exits 0 (--resume RUN once a checkpoint
    exists); `after_cut(run)` after each process that was cut. Returns (fault spec, exit code) per process;
    raises when one ends otherwise than cut or done."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done: list[tuple[str, int]] = []
    for fault in [*faults, *[None] * max_clean]:
        resume = ["--resume", str(run)] if (run / "last.pt").exists() or (run / "resume.pt").exists() else []
        spec = fault.spec if fault is not None and fault.kind != "time" else "none"
        proc = subprocess.Popen([sys.executable, "-m", "bench.resume_stress", "--child", spec, *args, *resume],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        if fault is not None and fault.kind == "time":
            try:
                proc.wait(timeout=fault.at)
            except subprocess.TimeoutExpired:
                proc.send_signal(SIGNALS[fault.sig])
        out = proc.communicate(timeout=timeout)[0].decode(errors="replace")
        done.append((fault.spec if fault is not None else "none", proc.returncode))
        if proc.returncode == 0:
            return done
        if proc.returncode not in CUT:
            raise RuntimeError(f"{done[-1]}: exit {proc.returncode}\n{out[-3000:]}")
        if after_cut is not None:
            after_cut(run)
    raise RuntimeError(f"{run}: not done after {done}")


def _rows(run: Path) -> list[dict]:
    with open(run / "results.csv") as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


def compare_runs(run: Path, reference: Path) -> list[str]:
    """What differs between two finished run folders: results.csv (times aside), the tensors of last.pt and
    best.pt (torch.equal) and their epoch and best fitness, files left behind. [] when they are the same."""
    problems = []
    if _rows(run) != _rows(reference):
        columns = [c for c in RESULT_COLUMNS if c not in TIME_COLUMNS
                   and [r.get(c) for r in _rows(run)] != [r.get(c) for r in _rows(reference)]]
        problems.append(f"results.csv differs in {columns or 'its rows'}")
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(run / name), load_checkpoint(reference / name)
        for key in ("state_dict", "ema"):
            ta, tb = a[key] or {}, b[key] or {}
            unequal = [k for k in tb if k not in ta or not torch.equal(ta[k], tb[k])]
            if unequal or ta.keys() != tb.keys():
                problems.append(f"{name} {key}: {len(unequal)} tensors differ, e.g. {unequal[:3]}")
        for key in ("epoch", "best_fitness", "optimizer"):
            if a[key] != b[key]:
                problems.append(f"{name} {key}: {a[key]} != {b[key]}")
    left = [p.name for p in run.iterdir() if p.name == "resume.pt" or p.name.endswith(".tmp")]
    if left:
        problems.append(f"left behind: {left}")
    return problems


def random_plan(rng: random.Random, batches: int, seconds: float) -> list[Fault]:
    """1 to 3 faults of random kinds, signals and moments (`batches` per run, a run lasting ~`seconds`)."""
    plan = []
    for _ in range(rng.randint(1, 3)):
        kind, sig = rng.choice(KINDS), rng.choice(list(SIGNALS))
        at = round(rng.uniform(1.0, seconds), 2) if kind == "time" else rng.randint(1, batches if kind != "save"
                                                                                  else 2 * batches // 4)
        plan.append(Fault(kind, sig, at, rng.randint(1, 3)))
    return plan


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="interrupted runs (each 1-3 faults, then resumed)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the plans (kinds, signals, moments)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="loader workers, one drawn per run")
    ap.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/resume_stress.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        data = write_tiny_data(root / "data")
        t0 = time.time()
        train_until_done(train_args(data, root, "reference", args.epochs, 0), root / "reference", [])
        seconds = time.time() - t0
        rng, counts, exact, failures = random.Random(args.seed), Counter(), 0, []
        for i in range(args.runs):
            plan, workers = random_plan(rng, 4 * args.epochs, seconds), rng.choice(args.workers)
            name = f"run{i}"
            segments = train_until_done(train_args(data, root, name, args.epochs, workers), root / name, plan)
            for (spec, code), fault in zip(segments, plan):  # a fault set past the run's end never fires
                counts[(fault.kind, fault.sig, "cut" if code != 0 else "missed")] += 1
            counts["processes"] += len(segments)
            counts[f"workers {workers}"] += 1
            problems = compare_runs(root / name, root / "reference")
            exact += not problems
            if problems:
                failures.append(f"run{i} (workers {workers}, {[f.spec for f in plan]}): {'; '.join(problems)}")
            print(f"run{i}: workers {workers}, {segments}: {'exact' if not problems else problems}", flush=True)
    faults = sorted({key[:2] for key in counts if isinstance(key, tuple)})
    rows = [(kind, sig, counts[(kind, sig, "cut")], counts[(kind, sig, "missed")]) for kind, sig in faults]
    split = ", ".join(f"{k}: {counts[k]}" for k in sorted(k for k in counts if str(k).startswith("workers")))
    cuts = sum(n for key, n in counts.items() if isinstance(key, tuple) and key[2] == "cut")
    text = (f"{args.runs} interrupted runs of {args.epochs} epochs (seed {args.seed}; {split}), {counts['processes']} "
            f"processes, {cuts} cut by a fault: **{exact} exact**, {args.runs - exact} not\n\n"
            + markdown_table(["fault", "signal", "cut a process", "set past the run's end"], rows)
            + "".join(f"\n- {f}" for f in failures))
    publish("resume_stress", text, "bench.resume_stress", argv, keep=not args.no_record)
    return 0 if exact == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
