"""A study in MLflow and TensorBoard: one MLflow run, and one TensorBoard run, per trial.

TensorBoard (on when the package is installed, unless the study's `train: {tensorboard: off}`): each trial
writes runs/evolve/NAME/tensorboard/trial_N: its metrics per epoch, then its searched hyps as hparams against its
objective value, so `tensorboard --logdir runs` shows the study in the HParams tab (a table and parallel
coordinates of hyps against value) beside the trainings.

`mlflow: URI` in the study file (a tracking URI: `sqlite:///mlflow.db`, or a tracking server's URL when workers
run on several machines; the `mlflow` extra). The experiment is named after the study; each trial's run (named
by the trial number) gets the trial's metrics per epoch while it trains (P, R, mAP50, mAP50-95, fitness, val
losses), and once the trial is told: its value as `objective`, its params, its state and user attrs as tags,
and the run's status (FINISHED, KILLED when pruned, FAILED).

Our own small client code rather than optuna-integration's MLflowCallback: that callback is deprecated since
Optuna 4.9 (removed in 6.0), logs only the final value, and drives MLflow's process-wide active run; MlflowClient
calls with an explicit run id touch no global state.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from optuna.trial import TrialState

from core.trackers import METRIC_NAMES, SCALARS, tensorboard_available
from evolve.objectives import fitness_value, has_fitness

__all__ = ["MLflowTrials", "TensorBoardTrials", "TrialTrackers", "trial_trackers"]

TENSORBOARD_DIR = "tensorboard"  # runs/evolve/NAME/tensorboard/trial_N

STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


class MLflowTrials:
    """The MLflow side of one worker: `wrap(objective)` opens each trial's MLflow run before it trains, `epoch`
    logs its epochs there, `told(study, trial_id)` adds the outcome and closes the run."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient  # optional: the `mlflow` extra
        self.client = MlflowClient(uri)
        self.run_id: str | None = None
        self._experiments: dict[str, str] = {}

    def _experiment(self, name: str) -> str:
        if name not in self._experiments:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiments[name] = self.client.create_experiment(name)
                except Exception:  # noqa: BLE001 - another worker created it first
                    self._experiments[name] = self.client.get_experiment_by_name(name).experiment_id
            else:
                self._experiments[name] = found.experiment_id
        return self._experiments[name]

    def wrap(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        def tracked(trial: optuna.Trial) -> float:
            experiment = self._experiment(trial.study.study_name)
            self.run_id = self.client.create_run(experiment, run_name=str(trial.number),
                                                 tags={"number": str(trial.number)}).info.run_id
            return objective(trial)
        return tracked

    def epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric
        if self.run_id is not None:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(metrics[k]), _ms(), epoch)
                                                        for k in METRIC_NAMES if k in metrics])

    def told(self, study: optuna.Study, trial_id: int) -> None:
        from mlflow.entities import Metric, Param, RunTag
        if self.run_id is None:
            return
        t = study._storage.get_trial(trial_id)
        tags = {"state": t.state.name, "study": study.study_name,
                **{k: str(v)[:5000] for k, v in t.user_attrs.items()}}
        finite = has_fitness(t)
        metrics = [Metric("objective", float(fitness_value(t)), _ms(), 0)] if finite else []
        self.client.log_batch(self.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in t.params.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(self.run_id, STATUS.get(t.state, "FAILED"))
        self.run_id = None


def _ms() -> int:
    return int(time.time() * 1000)


class TensorBoardTrials:
    """Each trial as one TensorBoard run under `log_dir` (trial_N): per-epoch metrics, then hyps as hparams."""

    def __init__(self, log_dir: Path | str):
        from torch.utils.tensorboard import SummaryWriter  # optional: the `tensorboard` extra
        self._writer = SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def wrap(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        def tracked(trial: optuna.Trial) -> float:
            self.writer = self._writer(str(self.log_dir / f"trial_{trial.number}"))
            return objective(trial)
        return tracked

    def epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        if self.writer is not None:
            for key, tag in SCALARS.items():
                if key in metrics:
                    self.writer.add_scalar(tag, float(metrics[key]), epoch)
            self.writer.flush()

    def told(self, study: optuna.Study, trial_id: int) -> None:
        if self.writer is None:
            return
        t = study._storage.get_trial(trial_id)
        value = {"hparam/objective": float(fitness_value(t))} if has_fitness(t) else {}
        self.writer.add_hparams({k: float(v) for k, v in t.params.items()}, value, run_name=".")
        self.writer.close()
        self.writer = None


class TrialTrackers:
    """Several trackers as one: `wrap` nests them, `epoch` and `told` go to each."""

    def __init__(self, trackers: list[Any]):
        self.trackers = trackers

    def wrap(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        for t in self.trackers:
            objective = t.wrap(objective)
        return objective

    def epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.epoch(epoch, metrics)

    def told(self, study: optuna.Study, trial_id: int) -> None:
        for t in self.trackers:
            t.told(study, trial_id)


def trial_trackers(cfg: Any, run_dir: Path | str) -> TrialTrackers | None:
    """The study's trackers: MLflow with `mlflow:`, TensorBoard when installed (unless train: tensorboard off)."""
    trackers: list[Any] = []
    if cfg.mlflow:
        trackers.append(MLflowTrials(cfg.mlflow))
    mode = cfg.train.get("tensorboard", "auto")
    if mode == "on" or (mode == "auto" and tensorboard_available()):
        trackers.append(TensorBoardTrials(Path(run_dir) / TENSORBOARD_DIR))
    return TrialTrackers(trackers) if trackers else None
