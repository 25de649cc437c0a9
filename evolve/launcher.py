"""Start the worker processes of a study (one per GPU, or N on CPU), follow progress, stop them cleanly."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from core.atomic import atomic_write
from core.hyp import load_hyp
from core.digest import sha256_file
from evolve import budget
from evolve.base_run import base_run_change
from evolve.devices import Slot, device_slots
from evolve.ledger import count_finished, is_counted, retried_numbers
from evolve.noise import NOISE_ATTR, NoiseFloor, noise_floor
from evolve.objectives import fitness_value, study_directions
from evolve.preflight import preflight
from evolve.report import write_outputs
from evolve.shared_base import SHARED_BASE, study_base_run
from evolve.space import base_params, check_base, evolved, load_space
from evolve.status import format_status, status_line, study_status
from evolve.storage import describe, make_storage, study_lock
from evolve.study_config import REPO, StudyConfig, StudyError
from evolve.train_setup import start_weights
from evolve.worker import STUDY_FILE, load_callable

__all__ = ["launch"]

LOGGER = logging.getLogger(__name__)

# Fields that change what a trial measures: resuming with other values mixes incomparable trials.
COMPARABLE = ("data", "model", "hyp", "space", "imgsz", "batch", "epochs", "fitness_weights", "train", "seed",
              "weights", "base", "objective")
# Seeds of the noise trials: study seed + NOISE_SEED_OFFSET + j, apart from the retrains' seed + 1, + 2, ...
NOISE_SEED_OFFSET = 100


def noise_trial_attrs(cfg: StudyConfig) -> list[dict[str, Any]]:
    """User attrs of the enqueued base-hyp trials: trial 0 at the study seed, then one per extra noise seed. A
    retry keeps them (evolve.ledger.CARRIED_ATTRS), so it measures the same seed as the trial it re-runs."""
    attrs: list[dict[str, Any]] = [{"base": True, NOISE_ATTR: 0, "train_seed": cfg.seed}]
    for j in range(1, cfg.noise_seeds):
        attrs.append({"base": True, NOISE_ATTR: j, "train_seed": cfg.seed + NOISE_SEED_OFFSET + j})
    return attrs


def prepare_study(cfg: StudyConfig, storage_url: str | None, run_dir: Path | str) -> optuna.Study:
    """Create (or reopen) the study, record its provenance, enqueue the base hyp as trial 0, write study.yaml."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    space = load_space(cfg.resolved("space"))
    base_hyp = load_hyp(cfg.resolved("hyp"))
    check_base(space, base_hyp, cfg.hyp or "base hyp (studies/hyp/scratch.yaml)")
    with study_lock(storage_url, run_dir, cfg.name):  # one machine enqueues the base hyp, once
        directions = study_directions(cfg.objectives)
        study = optuna.create_study(study_name=cfg.name, storage=make_storage(storage_url, run_dir),
                                    directions=directions, load_if_exists=True)
        if len(study.directions) != len(directions):  # Optuna reopens a stored study as it was created
            raise StudyError(f"study '{cfg.name}' in the storage has {len(study.directions)} objective(s) and the "
                             f"study file asks for {cfg.objectives}: use --name for a new study")
        record = cfg.as_record()
        old = study.user_attrs.get("config")
        if old is None:
            study.set_user_attr("config", record)
            study.set_user_attr("base_hyp", base_hyp)
            study.set_user_attr("space_evolved", [g.name for g in evolved(space)])
            study.set_user_attr("created", time.strftime("%Y-%m-%d %H:%M:%S"))
        else:
            changed = [k for k in COMPARABLE if old.get(k) != record.get(k)]
            if changed:
                LOGGER.warning(f"warning: resuming study '{cfg.name}' with changed " +
                               ", ".join(f"{k} ({old.get(k)!r} -> {record.get(k)!r})" for k in changed) +
                               ": old and new trials are not comparable (use --name for a new study)")
            if old.get("budget") != record.get("budget"):  # chosen after the search: the trials stay comparable
                LOGGER.info(f"study '{cfg.name}': budget {old.get('budget')!r} -> {record.get('budget')!r}; the "
                            f"choice within it and pareto.png use the new one")
                study.set_user_attr("config", {**old, "budget": record.get("budget")})
        trials = study.get_trials(deepcopy=False)
        if all(t.user_attrs.get("base") for t in trials):  # nothing drawn yet: enqueue the noise seeds not in it
            have = {t.user_attrs.get(NOISE_ATTR) for t in trials}  # (a run killed between two enqueues left some)
            for attrs in noise_trial_attrs(cfg):
                if attrs[NOISE_ATTR] not in have:
                    study.enqueue_trial(base_params(space, base_hyp), user_attrs=attrs, skip_if_exists=False)
    atomic_write(run_dir / STUDY_FILE, yaml.safe_dump({k: v for k, v in record.items()}, sort_keys=False))
    return study


START_SHA = "start_weights_sha256"  # study user attr: what every trial finetunes, by content


def check_shared_start(cfg: StudyConfig, base_hyp: dict, storage_url: str | None, run_dir: Path,
                       before_base_run: bool = False) -> None:
    """Every trial of a study must finetune the same checkpoint, on every machine that joins it.

    The first machine records the sha256 of its start weights (`weights:` or its base run) in the
    study; a machine whose own differ is refused with what to do. Checked before the base run too, so
    a joining machine is told to copy the first machine's base run instead of training its own.
    """
    if not (cfg.weights or cfg.base):
        return
    try:
        study = optuna.load_study(study_name=cfg.name, storage=make_storage(storage_url, run_dir))
    except KeyError:
        return  # a new study: this machine's start weights will be the study's
    recorded = study.user_attrs.get(START_SHA)
    fix = (f"copy {run_dir / 'base'}/ from the machine that started the study to this one (the base run is "
           f"reused when its inputs match), give every machine `artifacts:` (a folder all reach) to share it, or "
           f"use --name for a new study" if cfg.base and not cfg.weights else
           "give every machine the same `weights:` file, or use --name for a new study")
    if before_base_run:
        change = base_run_change(cfg, base_hyp, run_dir) if recorded and cfg.base and not cfg.weights else None
        if change and sha256_file(start_weights(cfg, run_dir)) == recorded:  # its own base run, other inputs now
            raise StudyError(f"study '{cfg.name}': the base run its trials finetune was trained with other inputs "
                             f"({change}): redoing it would mix two start points; run with the inputs it was "
                             f"trained with, or use --name for a new study")
        if change:
            raise StudyError(f"study '{cfg.name}' finetunes a base run this machine does not have "
                             f"(sha256 {recorded[:12]}; here: {change}): training another would mix two start "
                             f"points; {fix}")
        return
    weights = start_weights(cfg, run_dir)
    sha = sha256_file(weights)
    with study_lock(storage_url, run_dir, cfg.name):
        recorded = study.user_attrs.get(START_SHA)
        if recorded is None:
            study.set_user_attr(START_SHA, sha)
        elif recorded != sha:
            raise StudyError(f"study '{cfg.name}': this machine's start weights {weights} (sha256 {sha[:12]}) are "
                             f"not the ones its trials finetune (sha256 {recorded[:12]}); {fix}")


def _spawn(run_dir: Path, index: int, slot: Slot, storage_url: str | None,
           fit_spec: str | None, deadline: float | None = None) -> subprocess.Popen:
    env = {**os.environ, **slot.env, "OMP_NUM_THREADS": str(slot.threads),
           "MKL_NUM_THREADS": str(slot.threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("EVOLVE_STORAGE", None)
    if storage_url:
        env["EVOLVE_STORAGE"] = storage_url  # never on the command line: `ps` would show credentials
    cmd = [sys.executable, "-m", "evolve.worker", "--run-dir", str(run_dir), "--worker", str(index),
           "--device", slot.device, "--device-label", slot.label, "--threads", str(slot.threads)]
    if fit_spec:
        cmd += ["--fit", fit_spec]
    if deadline is not None:
        cmd += ["--deadline", repr(deadline)]
    log = open(run_dir / f"worker_{index}.log", "a")
    # Own session: a terminal Ctrl-C reaches only the launcher, which forwards one SIGTERM per worker.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    return proc


def _line(t: FrozenTrial, best: FrozenTrial | None, floor: NoiseFloor | None = None) -> str:
    ua = t.user_attrs
    where = f"worker {ua.get('worker', '?')} ({ua.get('device', '?')})"
    secs = f"{ua.get('seconds', float('nan')):7.1f} s"
    best_txt = f"best {fitness_value(best):.4g} (trial {best.number})" if best is not None else "best -"
    if t.state == TrialState.COMPLETE:
        role = "  base hyp, seed %s" % ua.get("train_seed", "?") if ua.get("base") else ""
        gain = f" ({floor.gain_sd(fitness_value(t)):+.1f} sd)" if floor is not None else ""
        cost = "".join(f", {k} {ua[k]:.4g}" for k in ("latency_ms", "gflops") if k in ua)  # two-objective study
        size = f" at {ua['imgsz']} px" if cost else ""
        return (f"trial {t.number:4d}  COMPLETE  fitness {fitness_value(t):.4g}{gain}{cost}{size}  {best_txt}  {secs}  "
                f"{where}{role}")
    if t.state == TrialState.PRUNED:
        return f"trial {t.number:4d}  PRUNED    after {len(t.intermediate_values)} epoch(s)  {best_txt}  {secs}  {where}"
    # a trial failed by Optuna's RDB heartbeat check carries no reason of ours
    reason = ua.get("fail_reason") or "stale: no heartbeat within the grace period"
    return f"trial {t.number:4d}  FAIL      {reason}  {best_txt}  {where}"


class _Stop:
    """SIGINT/SIGTERM in the launcher: remember it; the monitor loop then stops the workers."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def _best(trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and fitness_value(t) is not None]
    return max(done, key=lambda t: (fitness_value(t), -t.number)) if done else None


def launch(cfg: StudyConfig, storage_url: str | None = None, run_dir: Path | str | None = None,
           fit_spec: str | None = None, poll: float = 2.0, stop_timeout: float = 60.0,
           plot_every: float = 60.0, threads: int | None = None, deadline: budget.Deadline | None = None) -> int:
    """Run the study to `cfg.trials` finished trials, or to its deadline (the study's `budget:`, or `deadline`,
    e.g. --timeout's, whichever comes first: evolve/budget.py); exit code 0 done (or the deadline reached),
    1 workers failed, 130 interrupted."""
    run_dir = Path(run_dir) if run_dir else Path("runs") / "evolve" / cfg.name
    space, base_hyp = load_space(cfg.resolved("space")), load_hyp(cfg.resolved("hyp"))
    preflight(cfg, space, base_hyp)  # a missing GPU or broken data fails here, before the study exists
    first_device = "cpu" if cfg.gpus == "cpu" else cfg.gpus.split(",")[0]  # the launcher's own view of the GPUs
    study = prepare_study(cfg, storage_url, run_dir)
    if SHARED_BASE not in study.user_attrs:  # a study from before shared base runs records only its start sha256
        check_shared_start(cfg, base_hyp, storage_url, run_dir, before_base_run=True)
    study_base_run(cfg, base_hyp, study, storage_url, run_dir, first_device,
                   fit=load_callable(fit_spec) if fit_spec else None)  # trained once per study, fetched elsewhere
    check_shared_start(cfg, base_hyp, storage_url, run_dir)
    trials = study.get_trials(deepcopy=False)
    done = count_finished(trials)
    deadline = budget.study_deadline(cfg.budget, study.user_attrs, study.set_user_attr).earliest(deadline)
    if deadline.passed() and done < cfg.trials:
        LOGGER.warning(f"study '{cfg.name}': its deadline {deadline.describe()} has passed with {done}/{cfg.trials} "
                       f"trials finished: nothing started (raise budget: hours, or give a longer --timeout)")
        write_outputs(study, run_dir)
        return 0
    plan = device_slots(cfg, threads)
    devices = ", ".join(sorted({s.label for s in plan}))
    searched = "".join(f", {name} searched {r[0]:g}-{r[1]:g}" for name, r in (
        ("pruned share", cfg.prune_range), ("width", cfg.width_range), ("depth", cfg.depth_range)) if r)
    LOGGER.info(f"study '{cfg.name}': {cfg.sampler} sampler, {done}/{cfg.trials} trials finished, storage "
                f"{describe(storage_url, run_dir)}\n  {len(plan)} worker(s) on {devices} "
                f"({plan[0].threads} thread(s) each), {cfg.epochs} epoch(s)/trial at imgsz {cfg.imgsz}"
                f"{' (searched: %d-%d)' % tuple(cfg.imgsz_range) if cfg.imgsz_range else ''}"
                f"{searched}; "
                f"logs in {run_dir}/worker_*.log")
    if done:
        LOGGER.info(format_status(study_status(study, cfg.trials)))
    if done >= cfg.trials:
        LOGGER.info(f"nothing to run: the study already has {done} finished trials (raise --trials to continue)")
        write_outputs(study, run_dir)
        return 0
    stop = _Stop()
    if deadline.at is not None:
        LOGGER.info(f"  no trial starts after {deadline.describe()}")
    procs = [_spawn(run_dir, i, p, storage_url, fit_spec, deadline.at) for i, p in enumerate(plan)]
    seen = {t.number for t in trials if t.state.is_finished()}
    bar = tqdm(total=cfg.trials, initial=min(done, cfg.trials), desc=f"evolve {cfg.name}", unit="trial",
               dynamic_ncols=True)
    stopping_since: float | None = None
    last_plot = time.time()

    def show_new() -> bool:
        trials = study.get_trials(deepcopy=False)
        new = sorted((t for t in trials if t.state.is_finished() and t.number not in seen), key=lambda t: t.number)
        floor, retried = noise_floor(trials), retried_numbers(trials)
        for t in new:  # 'best so far' = among the trials finished up to this one
            seen.add(t.number)
            best = _best([u for u in trials if u.number in seen])
            bar.write(_line(t, best, floor) + ("" if is_counted(t, retried) else "  (re-enqueued)"))
        bar.n = min(count_finished(trials), cfg.trials)
        bar.set_postfix_str(status_line(study_status(study, cfg.trials)), refresh=False)  # best, floor, ETA
        bar.refresh()
        return bool(new)

    try:
        while any(p.poll() is None for p in procs):
            time.sleep(poll)
            if stop.signum is not None and stopping_since is None:
                bar.write(f"signal {stop.signum}: stopping {len(procs)} worker(s); running trials are re-enqueued")
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                stopping_since = time.time()
            if stopping_since is not None and time.time() - stopping_since > stop_timeout:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            if show_new():
                # Tables on every finished trial; plots (seconds of CPU the workers need) at most every plot_every s.
                plots = time.time() - last_plot > plot_every
                write_outputs(study, run_dir, plots=plots)
                last_plot = time.time() if plots else last_plot
        show_new()
    finally:
        bar.close()
        stop.restore()
    codes = [p.wait() for p in procs]
    paths = write_outputs(study, run_dir)
    trials = study.get_trials(deepcopy=False)
    done, best = count_finished(trials), _best(trials)
    LOGGER.info(f"{done}/{cfg.trials} trials finished; best: " +
                (f"trial {best.number}, fitness {fitness_value(best):.4g}" if best else "none") +
                "\n  " + "\n  ".join(f"{k:16s} {p}" for k, p in paths.items()))
    if stop.signum is not None:
        LOGGER.info("interrupted: run the same command again to resume")
        return 130
    if done < cfg.trials and deadline.passed() and not any(codes):
        LOGGER.info(f"the deadline {deadline.describe()} stopped the study at {done}/{cfg.trials} trials")
        return 0
    if done < cfg.trials:
        bad = [i for i, c in enumerate(codes) if c]
        LOGGER.warning("workers stopped early; see " + (", ".join(f"{run_dir}/worker_{i}.log (exit {codes[i]})"
                                                                  for i in bad) or "their logs"))
        for i in bad[:1]:  # the reason, usually the same for every worker
            lines = (run_dir / f"worker_{i}.log").read_text(errors="replace").strip().splitlines()
            LOGGER.warning("  " + (lines[-1] if lines else "(empty log)"))
        return 2 if any(codes[i] == 2 for i in bad) else 1
    return 0
