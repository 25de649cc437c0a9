"""Resume is exact for a study and for the prune pipeline: `python -m bench.crash_resume --target study|pipeline`
SIGKILLs them at seeded moments in every phase, runs them again until done, and compares the result with the
uninterrupted run's.

A kill point is an event of the work and its count in the process that meets it:
  epoch   the end of epoch `at` of the training named `name` (the base run 'base', trial '4', retrain
          'trial4_seed1', prune stages 'sparse', 'channel_step1', 'finetune', ...)
  write   the `at`-th rename that ends an atomic write of a file named `name` (its temp file is written, the
          rename not done: checkpoints, run.json, phase records, evolve.csv, summary.json, prune_results.csv ...)
  append  the `at`-th append to the Optuna journal in the process: half of its bytes are written, then the kill
At the point the whole process group dies by SIGKILL (the study's launcher and its workers together, as a job
killed by its scheduler or the OOM killer). The uninterrupted reference run logs every event; a plan draws its
points from that log, one in each phase, sorted, and each attempt arms the next point until one exits 0.

The attempts fork from this process (imports paid once: each starts in milliseconds) and run the commands
themselves, `python -m evolve.study --study FILE` and `python -m prune.pipeline ARGS`, through runpy; the
launcher's `python -m evolve.worker` processes are forked from it in turn (ForkedWorker), in its process group.
Every training goes through core.train.fit, replaced in the attempt before the commands import it:
`--fit fake` (the CI tests') trains nothing (metrics a smooth function of the hyp and seed, weights a seeded
change of the start model's BN gammas, pictures written blank); `--fit real` trains the tiny model for real.
Children use one torch and one OpenCV thread: a pool started before a fork hangs the child.

What is compared: summary.json (timings aside), evolve.csv (counted trials: number, state, params, value,
metrics; timings, pids and hosts aside), retrain.csv and prune_results.csv (latencies and seconds aside),
channels.csv; and the work done: trainings started plus prune stages saved over all attempts may exceed the
reference's by at most one per kill (the unit the kill cut), so nothing complete is redone.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import random
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import cv2
import pandas as pd
import torch
import yaml
from matplotlib.figure import Figure

from bench.record import markdown_table, publish
from bench.resume_stress import write_tiny_data
from core.callbacks import Callbacks
from core.checkpoint import model_from_checkpoint, save_checkpoint
from core.digest import code_version
from core.model.yolo import Model
from core import train as core_train
from core.train import fit as train_fit
from evolve.storage import JournalFile

__all__ = ["Point", "STUDY_PHASES", "PIPELINE_PHASES", "compare_pipeline", "compare_study", "crash_point",
           "fake_fit", "main", "phase_of", "pick_points", "pipeline_args", "pipeline_attempt", "real_fit",
           "study_attempt", "until_done", "work_done", "write_tiny_data", "write_tiny_study"]

REPO = Path(__file__).resolve().parents[1]
MODEL = str(REPO / "studies" / "models" / "yolov5-cpu.yaml")
STUDY_PHASES = ("base", "trials", "retrain", "prune", "report")
PIPELINE_PHASES = ("baseline", "sparse", "keep_size", "unstructured", "channel", "layer", "finetune", "report")
STAGE_FILES = {f"{s}.pt": s for s in PIPELINE_PHASES[:-1]}
TIMING = {"seconds", "train_seconds", "val_seconds", "overhead_seconds", "latency_ms", "onnx_latency_ms",
          "datetime_start", "datetime_complete", "duration", "updated", "pid", "host", "worker", "device"}


@dataclass(frozen=True)
class Point:
    """Where to kill: the `at`-th event of `kind` named `name` in a process (module docstring)."""

    kind: str
    name: str
    at: int

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.name}:{self.at}"


# --- the events: logged in the reference run, a kill when armed -----------------------------------------------

_STATE: dict[str, Any] = {"point": None, "log": None, "counts": Counter()}


def crash_point(kind: str, name: str, partial: Callable[[], None] | None = None) -> None:
    """One event of the work: logged (reference runs), and the kill when it is the armed point; `partial` runs
    first then (a half-written append)."""
    counts = _STATE["counts"]
    counts[(kind, name)] += 1
    if _STATE["log"] is not None:
        with open(_STATE["log"], "a") as f:
            f.write(json.dumps([kind, name, counts[(kind, name)]]) + "\n")
    if _STATE["point"] == Point(kind, name, counts[(kind, name)]):
        if partial is not None:
            partial()
        os.killpg(os.getpgid(0), signal.SIGKILL)


def _arm(point: Point | None, log: Path | None) -> None:
    """Install the hooks in this process (inherited by its forks): atomic writes' renames, journal appends."""
    _STATE.update(point=point, log=log, counts=Counter())
    replace = os.replace

    def counted_replace(src, dst, *args, **kwargs):
        crash_point("write", Path(dst).name)
        out = replace(src, dst, *args, **kwargs)
        crash_point("wrote", Path(dst).name)  # logged (work_done), never armed
        return out
    os.replace = counted_replace
    append = JournalFile.append_logs

    def counted_append(self, logs):
        def half() -> None:
            data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode()
            with open(self._file_path, "ab") as f:
                f.write(data[: len(data) // 2])
        crash_point("append", "journal", half)
        return append(self, logs)
    JournalFile.append_logs = counted_append


def _events(log: Path) -> list[Point]:
    return [Point(*json.loads(line)) for line in log.read_text().splitlines()] if log.is_file() else []


# --- forked processes -----------------------------------------------------------------------------------------

def _child_setup(log: Path) -> None:
    """A forked child: one thread (a pool started before the fork hangs it), output to its log."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)


def run_forked(fn: Callable[[], int], point: Point | None, cwd: Path, log: Path | None = None,
               timeout: float = 600) -> int:
    """fn() in a forked child in its own process group, in `cwd`, with `point` armed; its exit code (-9: killed).
    Whatever of its group is left when it ends is killed."""
    out = cwd / "attempts.log"
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.setpgid(0, 0)
            os.chdir(cwd)
            _child_setup(out)
            print(f"=== attempt, kill point {point.spec if point else 'none'} ===", flush=True)
            _arm(point, log)
            code = int(fn() or 0)
        except SystemExit as e:
            code = int(e.code or 0)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    t_end = time.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > t_end:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"attempt with {point} ran past {timeout} s; see {out}")
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(status)


class ForkedWorker:
    """`python -m evolve.worker ARGS` as the launcher starts it, forked from the launcher instead of exec'd (the
    part of subprocess.Popen the launcher uses). It stays in the launcher's process group, unlike the launcher's
    own start_new_session: a kill point kills the study's processes together."""

    def __init__(self, args: list[str], env: dict[str, str], log_fd: int) -> None:
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            code = 3
            try:
                os.environ.clear()
                os.environ.update(env)
                _STATE["counts"] = Counter()  # a worker's events count from its own start
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
                code = _run_command("evolve.worker", args)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _fork_workers() -> None:
    """subprocess.Popen, except that the launcher's `python -m evolve.worker ...` is forked (ForkedWorker)."""
    popen = subprocess.Popen

    def popen_or_fork(cmd, *args, **kwargs):
        if isinstance(cmd, list) and cmd[1:3] == ["-m", "evolve.worker"]:
            return ForkedWorker(cmd[3:], kwargs.get("env") or dict(os.environ), kwargs["stdout"].fileno())
        return popen(cmd, *args, **kwargs)
    subprocess.Popen = popen_or_fork


def _run_command(module: str, args: list[str]) -> int:
    """`python -m MODULE ARGS` in this process: its exit code."""
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


# --- the training: fake (a function of hyp, seed and run name) or real, both with epoch kill points ----------

def _name(opts: Any) -> str:
    return str(opts.name)


def _score(hyp: dict, seed: int) -> float:
    """A smooth function of the hyp with its optimum inside the space, and 0-3% of seed noise."""
    d = (math.log10(hyp["lr0"]) - math.log10(0.003)) ** 2 + (hyp["mosaic"] - 0.7) ** 2 + \
        (hyp.get("momentum", 0.9) - 0.9) ** 2 * 4 + (hyp.get("mixup", 0.2) - 0.2) ** 2
    return math.exp(-d) * (1 + 0.005 * (seed % 7))


def fake_fit(data, model, hyp, opts, callbacks: Callbacks | None = None):
    """core.train.fit's contract without training: the start model (module, checkpoint or yaml) with its BN
    gammas scaled by a function of the run's name, seed and hyp; per-epoch metrics from the hyp (_score);
    the callbacks called as fit calls them (the sparse stage's trainer logs its gammas); best.pt when saving."""
    crash_point("fit", _name(opts))
    callbacks = callbacks or Callbacks()
    s = _score(hyp, opts.seed)
    net = None
    if opts.save or isinstance(model, torch.nn.Module):  # a trial (no checkpoint, a path to start from) needs none
        net = copy.deepcopy(model) if isinstance(model, torch.nn.Module) else \
            model_from_checkpoint(model) if str(model).endswith(".pt") else Model(model, nc=6)
        torch.manual_seed(sum(map(ord, _name(opts))) + opts.seed + int(1e6 * s))
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.mul_(torch.empty_like(m.weight).uniform_(0.5, 1.0))
    if callbacks.on_train_start:
        callbacks.on_train_start(net)
    history, best = [], {}
    for epoch in range(opts.epochs):
        if callbacks.on_epoch_start:
            callbacks.on_epoch_start(epoch)
        k = (epoch + 1) / opts.epochs
        m = {"epoch": epoch, "P": 0.9 * s * k, "R": 0.8 * s * k, "mAP50": s * k, "mAP50-95": 0.6 * s * k}
        w = opts.fitness_weights
        m["fitness"] = w[0] * m["P"] + w[1] * m["R"] + w[2] * m["mAP50"] + w[3] * m["mAP50-95"]
        history.append(m)
        best = m if not best or m["fitness"] > best["fitness"] else best
        crash_point("epoch", _name(opts))
        if callbacks.on_epoch_end:
            callbacks.on_epoch_end(epoch, m)
    best_path = None
    if opts.save:
        best_path = Path(opts.project) / opts.name / "best.pt"
        save_checkpoint(best_path, net, hyp=hyp, metrics=best, epoch=best["epoch"])
    return SimpleNamespace(history=history, best=best, best_fitness=best["fitness"], stop_reason="completed",
                           model=net, save_dir=None, best_path=best_path, last_path=None)


def real_fit(data, model, hyp, opts, callbacks: Callbacks | None = None):
    """core.train.fit with an epoch kill point after each epoch's checkpoint."""
    crash_point("fit", _name(opts))
    callbacks = copy.copy(callbacks) if callbacks is not None else Callbacks()
    inner = callbacks.on_epoch_end

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        crash_point("epoch", _name(opts))
        if inner:
            inner(epoch, metrics)
    callbacks.on_epoch_end = on_epoch_end
    return train_fit(data, model, hyp, opts, callbacks)


def _use_fit(fit: str) -> None:
    """Every training of the attempt through `fit`: core.train.fit replaced before the commands import it (the
    attempt imports them afresh: _run_command)."""
    core_train.fit = fake_fit if fit == "fake" else real_fit
    if fit == "fake":
        _blank_pictures()


def _blank_pictures() -> None:
    """With fake fits, pictures are written as empty files, not rendered: their drawing is most of a fake
    study's time, and they are pure functions of the tables compared (their writes are still kill points)."""
    def savefig(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"")
        else:
            Path(fname).write_bytes(b"")
    Figure.savefig = savefig
    Figure.tight_layout = lambda self, *args, **kwargs: None


# --- the two targets ---------------------------------------------------------------------------------------------


def write_tiny_study(root: Path, data: str, workers: int = 1, trials: int = 5) -> str:
    """The quick study made tiny, as a study file: a 2-epoch base run, 2-epoch trials (2 noise seeds), 2 retrain
    seeds with the base hyp, the prune phase with a sparse and a finetune epoch; one thread per training."""
    study = yaml.safe_load((REPO / "studies" / "quick.yaml").read_text())
    for key in ("model", "hyp", "space"):
        study[key] = str(REPO / study[key])
    study.update({"name": "crash", "data": data, "imgsz": 64, "batch": 8, "epochs": 2, "trials": trials,
                  "noise_seeds": 2, "workers": workers, "heartbeat": 1.0,
                  "base": {"epochs": 2, "close_mosaic": 1, "hyp": str(REPO / study["base"]["hyp"])},
                  "train": {**study["train"], "nbs": 8, "threads": 1, "tensorboard": "off", "plots": False},
                  "retrain": {"epochs": 2, "top_k": 1, "seeds": 2, "base": True},
                  "prune": {"sr": True, "s": 0.001, "sparse_epochs": 1, "finetune_epochs": 1, "global_percent": 0.3,
                            "shortcuts": 1, "latency_runs": 1, "onnx_latency": False}})
    path = root / "crash.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return str(path)


def study_attempt(study_file: str, fit: str) -> int:
    """One attempt at `python -m evolve.study --study FILE --threads 1` in this (forked) process, its workers
    forked from it."""
    _use_fit(fit)
    _fork_workers()
    return _run_command("evolve.study", ["--study", study_file, "--threads", "1"])


def pipeline_args(data: str, epochs: int = 1) -> list[str]:
    return ["--data", data, "--model", MODEL, "--epochs", str(epochs), "--sr", "--s", "0.01", "--sparse-epochs", "1",
            "--finetune-epochs", "2", "--iterative", "2", "--global-percent", "0.4", "--shortcuts", "1",
            "--unstructured", "0.3", "--imgsz", "64", "--batch-size", "8", "--nbs", "8", "--workers", "0",
            "--threads", "1", "--latency-runs", "1", "--no-onnx-latency", "--round-to", "8", "--project", "runs",
            "--name", "prune", "--no-progress"]


def pipeline_attempt(args: list[str], fit: str) -> int:
    """One attempt at `python -m prune.pipeline ARGS` in this (forked) process."""
    _use_fit(fit)
    return _run_command("prune.pipeline", args)


# --- plans, attempts, comparison ---------------------------------------------------------------------------------

def phase_of(point: Point, target: str) -> str | None:
    """The phase an event belongs to, from its name (module docstring); None: an event between phases."""
    name = point.name
    if target == "pipeline":
        if point.kind in ("fit", "epoch"):
            return "channel" if name.startswith("channel_step") else name if name in PIPELINE_PHASES else None
        if name in STAGE_FILES:
            return STAGE_FILES[name]
        return "report" if name in ("prune_results.csv", "channels.csv", "results.png") or name.endswith(".png") \
            else None
    if point.kind in ("fit", "epoch"):
        return ("base" if name == "base" else "trials" if name.isdigit() else
                "retrain" if name.startswith("trial") else "prune")
    if point.kind == "append":
        return "trials"
    if name in STAGE_FILES or name in ("prune_results.csv", "channels.csv"):
        return "prune"
    if name in ("run.json", "retrain.csv", "choice.json"):
        return None  # the base run's and the retrain's run.json share a name: not a phase of its own
    return "report" if name in ("summary.json", "report.html") else None


def pick_points(events: list[Point], target: str, rng: random.Random, per_phase: int = 1,
                kinds: tuple[str, ...] = ("epoch", "write", "append")) -> list[Point]:
    """`per_phase` kill points drawn from each phase's events (of `kinds`) of the reference run, in run order."""
    phases = STUDY_PHASES if target == "study" else PIPELINE_PHASES
    order = {p: i for i, p in reversed(list(enumerate(events)))}  # first occurrence
    chosen: set[Point] = set()
    for phase in phases:
        pool = sorted({e for e in events if e.kind in kinds and phase_of(e, target) == phase}, key=order.get)
        chosen.update(rng.sample(pool, min(per_phase, len(pool))))
    return sorted(chosen, key=order.get)


def until_done(attempt: Callable[[], int], points: list[Point], cwd: Path, log: Path | None = None,
               max_clean: int = 2, timeout: float = 600) -> list[tuple[str, int]]:
    """Run `attempt` forked with each kill point armed in turn, then unarmed, until one exits 0; (point, exit code)
    per attempt. An attempt ending otherwise than killed or done raises, with the end of its output."""
    cwd.mkdir(parents=True, exist_ok=True)
    done: list[tuple[str, int]] = []
    for point in [*points, *[None] * max_clean]:
        code = run_forked(attempt, point, cwd, log, timeout)
        done.append((point.spec if point else "none", code))
        if code == 0:
            return done
        if code != -signal.SIGKILL:
            tail = (cwd / "attempts.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{cwd}: attempt {done[-1]} ended with exit {code}\n{tail}")
    raise RuntimeError(f"{cwd}: not done after {done}")


def work_done(events: list[Point]) -> int:
    """Units of work in an event log: trainings started and prune stages saved (renamed into place: a kill before
    the rename redoes the stage's training, counted there); a training's own checkpoints are its unit's."""
    return sum(1 for e in events if e.kind == "fit" or (e.kind == "wrote" and e.name in STAGE_FILES))


def _timing(key: str) -> bool:
    return key in TIMING or key.endswith("_ms")  # wall clocks and latencies


def _table(path: Path) -> list[dict]:
    df = pd.read_csv(path)
    return json.loads(df[[c for c in df.columns if not _timing(c)]].to_json(orient="records"))


def _untimed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not _timing(k)}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _differs(name: str, a: Any, b: Any) -> list[str]:
    return [] if a == b else [f"{name} differs"]


def compare_study(run: Path, ref: Path, name: str = "crash") -> list[str]:
    """What differs between two finished study folders (cwd of each run): [] when they are the same."""
    sa, sb = (_untimed(json.loads((r / "runs/study" / name / "summary.json").read_text())) for r in (run, ref))
    problems = [f"summary.json differs in {k}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
    for rel in ("evolve/evolve.csv", "retrain/retrain.csv", "prune/prune_results.csv", "prune/channels.csv"):
        problems += _differs(rel, _table(run / "runs/study" / name / rel), _table(ref / "runs/study" / name / rel))
    return problems


def compare_pipeline(run: Path, ref: Path) -> list[str]:
    problems = []
    for rel in ("runs/prune/prune_results.csv", "runs/prune/channels.csv"):
        problems += _differs(rel, _table(run / rel), _table(ref / rel))
    return problems


def left_behind(run: Path) -> list[str]:
    """Temp files of atomic writes the kills cut (the writers remove their own; a SIGKILL leaves them)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*.tmp"))


# --- the command ---------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=("study", "pipeline"), required=True)
    ap.add_argument("--runs", type=int, default=5, help="interrupted runs (each killed once per phase, then resumed)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the plans")
    ap.add_argument("--per-phase", type=int, default=1, help="kill points per phase and run")
    ap.add_argument("--fit", choices=("fake", "real"), default="real")
    ap.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to bench/results")
    ap.add_argument("--json", type=Path, default=None, help="also write the counts and problems here")
    args = ap.parse_args(argv)
    os.environ.setdefault("YEP_CODE_VERSION", code_version())  # core.digest: a commit made meanwhile is no other code
    torch.set_num_threads(1)  # before any pool starts: the forks below must not inherit one (run_forked)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        data = write_tiny_data(root / "data")
        if args.target == "study":
            attempt = functools.partial(study_attempt, write_tiny_study(root, data), args.fit)
            compare = compare_study
        else:
            attempt = functools.partial(pipeline_attempt, pipeline_args(data), args.fit)
            compare = compare_pipeline
        t0 = time.time()
        ref_log = root / "reference.events"
        until_done(attempt, [], root / "reference", ref_log)
        ref_events, ref_s = _events(ref_log), time.time() - t0
        rng, counts, exact, failures = random.Random(args.seed), Counter(), 0, []
        for i in range(args.runs):
            points = pick_points(ref_events, args.target, rng, args.per_phase)
            cwd, log = root / f"run{i}", root / f"run{i}.events"
            attempts = until_done(attempt, points, cwd, log)
            fired = sum(code == -signal.SIGKILL for _, code in attempts)
            for point, (_, code) in zip(points, attempts):
                counts[(phase_of(point, args.target), point.kind, "cut" if code else "missed")] += 1
            counts["attempts"] += len(attempts)
            extra = work_done(_events(log)) - work_done(ref_events)
            problems = compare(cwd, root / "reference") + left_behind(cwd / "runs")
            if extra > fired:
                problems.append(f"{extra} units of work redone after {fired} kills")
            exact += not problems
            if problems:
                failures.append(f"run{i} ({[p.spec for p in points]}): {'; '.join(problems)}")
            print(f"run{i}: {attempts}, {extra} unit(s) redone: {'exact' if not problems else problems}", flush=True)
    rows = sorted((k[0] or "-", k[1], counts[(k[0], k[1], "cut")], counts[(k[0], k[1], "missed")])
                  for k in {k[:2] for k in counts if isinstance(k, tuple)})
    text = (f"`--target {args.target}` ({args.fit} fits; uninterrupted run {ref_s:.0f} s): {args.runs} runs killed by "
            f"SIGKILL of the process group, {counts['attempts']} attempts: **{exact} exact**, {args.runs - exact} "
            f"not\n\n" + markdown_table(["phase", "kill point", "cut an attempt", "not reached"], rows)
            + "".join(f"\n- {f}" for f in failures))
    publish("resume_stress", text, "bench.crash_resume", argv, keep=not args.no_record)
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "exact": exact, "failures": failures,
                                         "cut": {f"{k[0]}:{k[1]}": n for k, n in counts.items()
                                                 if isinstance(k, tuple) and k[2] == "cut"}}))
    return 0 if exact == args.runs else 1


if __name__ == "__main__":  # the workers load their fit from bench.crash_resume: one module, one armed state
    from bench.crash_resume import main as module_main
    raise SystemExit(module_main())
