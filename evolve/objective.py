"""One trial: suggest the evolved hyps, train with `fit`, report fitness per epoch, record provenance.

The objective value is the study's `objective:` over the trial's per-epoch fitness: `best` (the
best epoch, what best.pt keeps), `last` (the final epoch, what YOLOv5 --evolve scores: it reads
the last line of results.txt) or `mean_last_K` (the mean of the last K epochs). Each epoch's
fitness goes to trial.report(step = epochs run), so a pruner can stop a bad trial early
(StopTraining -> the trial ends PRUNED). A trial's training seed is its `train_seed` user attr
(the noise-seed trials of the base hyp) or the study seed: candidates share data order and init.
Any exception (NaN/inf loss, out of memory, bad hyp, ...) sets user attr `fail_reason` and
propagates, so Optuna (study.optimize(catch=...) or our ask/tell worker) records FAIL.

A two-objective study (`objectives: [fitness, latency_ms | gflops]`, evolve/objectives.py) returns
[value, cost]: the cost of the trained model at the trial's image size (evolve/trial_cost.py), recorded
as user attrs too. With `imgsz_range` the image size is a gene (`imgsz`, steps of 32; the base hyp's
trials keep the study's imgsz), recorded as user attr `imgsz` in such a study. With `prune_range` each searched
trial finetunes the warm start pruned at its `prune_share` gene (evolve/prune_gene.py; the base hyp's trials: 0).
With `width_range` / `depth_range` each searched trial trains, from scratch, the model yaml at its
`width_multiple` / `depth_multiple` genes (evolve/scale_gene.py; the base hyp's trials: the yaml's own).
Per-epoch fitness is reported only in one-objective studies (Optuna's Trial.report is single-objective).
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna

from core.callbacks import Callbacks, StopTraining
from core.data.config import load_data_config
from core.data.dataset import YoloDataset
from core.digest import sha256_file
from core.train import fit as train_fit
from evolve.objectives import STRIDE, cost_objective
from evolve.prune_gene import GENE as PRUNE_GENE, pruned_start, round_to_for, suggest_share
from evolve.scale_gene import scaled_model, trial_multiples
from evolve.space import Gene, Space, evolved, full_hyp
from evolve.study_config import StudyConfig, objective_epochs
from evolve.train_setup import search_train_options, start_weights, study_mosaic_factor, with_study_mosaic
from evolve.trial_cost import measure_cost, trial_model

__all__ = ["Objective", "objective_value"]

LOGGER = logging.getLogger(__name__)

FitFn = Callable[..., Any]
METRIC_ATTRS = ("P", "R", "mAP50", "mAP50-95", "fitness", "val_box", "val_obj", "val_cls")


def suggest(trial: optuna.Trial, g: Gene) -> float | int:
    if g.int:
        return trial.suggest_int(g.name, int(g.low), int(g.high), log=g.log)
    return trial.suggest_float(g.name, g.low, g.high, log=g.log)


def fail_reason(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    if "out of memory" in text.lower():
        text = "out of memory: " + text
    return text[:500]


class Objective:
    """Callable for Optuna: objective(trial) -> best-epoch fitness. `fit` is injectable (tests, bench)."""

    def __init__(self, cfg: StudyConfig, space: Space, base_hyp: Mapping[str, float], run_dir: Path | str,
                 fit: FitFn | None = None, device: str = "cpu", device_label: str = "cpu", worker: int = 0) -> None:
        self.cfg, self.space, self.base_hyp = cfg, space, dict(base_hyp)
        self.run_dir, self.device, self.device_label, self.worker = Path(run_dir), device, device_label, worker
        self._fit = fit
        self._injected = fit is not None  # tests and benches: their fit may never read the data
        self._mosaic_factor: float | None = None
        self._data: Any = None
        self._data_sha: str | None = None
        self.model = cfg.resolved("model")
        self.model_sha = sha256_file(self.model)
        self.weights = start_weights(cfg, self.run_dir)  # None: trials train from scratch
        self.on_epoch: Callable[[int, dict], None] | None = None  # e.g. evolve.tracking: each epoch to MLflow
        self._weights_sha: str | None = None
        self.cost = cost_objective(cfg.objectives)  # None: fitness is the only objective
        self._gflops: dict[tuple, dict[str, float]] = {}  # per (imgsz, checkpoint or yaml): the architecture
        self._round_to: int | None = None  # a prune-aware study's channel multiple, asked once
        self._start_model: Any = None  # the model measured when the fit returns none (injected fits)

    def fit(self) -> FitFn:
        if self._fit is None:
            self._fit = train_fit
        return self._fit

    def data(self) -> Any:
        """The data argument for fit, resolved once per worker (the built-in dataset is generated once)."""
        if self._data is None:
            if self.cfg.data:
                self._data = self.cfg.resolved("data")
                self._data_sha = sha256_file(self._data)
            else:
                self._data = load_data_config(None)
                self._data_sha = sha256_file(self._data.get("yaml_file"))
        return self._data

    def train_options(self, trial_number: int, seed: int | None = None, imgsz: int | None = None) -> Any:
        """No pictures (they would cost every trial time); AutoMosaic off: the study's factor is in the hyp."""
        return search_train_options(self.cfg, epochs=self.cfg.epochs, seed=self.cfg.seed if seed is None else seed,
                                    device=self.device, project=self.run_dir / "trials", name=str(trial_number),
                                    save=False, plots=False, automosaic=False, imgsz=imgsz or self.cfg.imgsz)

    def start(self, trial: optuna.Trial) -> str | None:
        """The checkpoint the trial finetunes: the study's, pruned at the trial's `prune_share` gene in a
        prune-aware study (the base hyp's trials: unpruned, the reference)."""
        if not self.cfg.prune_range:
            return self.weights
        share = 0.0 if trial.user_attrs.get("base") else suggest_share(trial, self.cfg.prune_range)
        trial.set_user_attr(PRUNE_GENE, share)
        if self._round_to is None:
            self._round_to = round_to_for(self.cfg.prune, self.device)
        return pruned_start(self.weights, share, self.run_dir / "pruned", self._round_to)

    def architecture(self, trial: optuna.Trial) -> str:
        """The model yaml the trial builds: the study's, at the trial's width and depth multiples where they are
        genes (recorded as user attrs in such a study; the base hyp's trials keep the yaml's own)."""
        ranges = {"width_range": self.cfg.width_range, "depth_range": self.cfg.depth_range}
        multiples = trial_multiples(trial, ranges, self.model, base=bool(trial.user_attrs.get("base")))
        for gene, value in multiples.items():
            trial.set_user_attr(gene, value)
        return scaled_model(self.model, multiples, self.run_dir / "models")

    def imgsz(self, trial: optuna.Trial) -> int:
        """The trial's image size: the `imgsz` gene with `imgsz_range`, the study's for the base hyp's trials."""
        if not self.cfg.imgsz_range or trial.user_attrs.get("base"):
            return int(self.cfg.imgsz)
        low, high = self.cfg.imgsz_range
        return int(trial.suggest_int("imgsz", int(low), int(high), step=STRIDE))

    def mosaic_factor(self) -> float:
        """AutoMosaic's factor of the base hyp on the study's data, once per worker (evolve.train_setup)."""
        if self._mosaic_factor is None:
            try:
                self._mosaic_factor = study_mosaic_factor(self.cfg, self.base_hyp, self.data())
            except Exception as e:
                if not self._injected:  # the real fit cannot train on data whose labels cannot be read either
                    raise
                LOGGER.warning(f"AutoMosaic: the study's labels cannot be read ({type(e).__name__}: {e}); the "
                               f"injected fit trains with the mosaic genes as drawn")
                self._mosaic_factor = 1.0
        return self._mosaic_factor

    def warm_up(self) -> float:
        """Decode the train and val images into this process's RAM cache before the first trial, so no
        trial pays for it (and a worker's first trial is timed like its others). Returns seconds spent."""
        opts = self.train_options(-1)
        if self._fit is not None or opts.cache != "ram":  # an injected fit (tests) or no RAM cache: nothing to warm
            return 0.0
        t0 = time.time()
        self.mosaic_factor()  # reads the labels: a data error stops the worker before its first trial
        data = self.data()
        cfg = data if isinstance(data, Mapping) else load_data_config(data)
        for split in ("train", "val"):
            YoloDataset(cfg[split], imgsz=opts.imgsz, cache="ram", nc=int(cfg["nc"]))
        return time.time() - t0

    def _epoch_reporter(self, trial: optuna.Trial) -> Callable[[int, dict], None]:
        # The base hyp's trials (trial 0 and the noise seeds) are the reference every gain is measured against and
        # the noise floor: no pruner may cut them short (Hyperband pruned trial 0 in bench.planted)
        prunable = not trial.user_attrs.get("base")
        single = self.cost is None  # Trial.report and pruners are single-objective only

        def on_epoch_end(epoch: int, metrics: dict) -> None:
            f = float(metrics["fitness"])
            if not math.isfinite(f):
                raise FloatingPointError(f"fitness is {f} at epoch {epoch}")
            if single:
                trial.report(f, epoch + 1)
            if self.on_epoch is not None:
                self.on_epoch(epoch, metrics)
            if single and prunable and trial.should_prune():
                raise StopTraining(f"pruned at epoch {epoch + 1}")
        return on_epoch_end

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        t0 = time.time()
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("device", self.device_label)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("sampler", self.cfg.sampler)
        try:
            params = {g.name: suggest(trial, g) for g in evolved(self.space)}
            imgsz = self.imgsz(trial)
            start = self.start(trial)
            model = self.architecture(trial)
            if self.cfg.imgsz_range or self.cost:
                trial.set_user_attr("imgsz", imgsz)
            hyp = with_study_mosaic(full_hyp(params, self.base_hyp), self.mosaic_factor())
            trial.set_user_attr("mosaic_factor", self.mosaic_factor())
            trial.set_user_attr("mosaic_used", hyp["mosaic"])  # the probability trained with (the gene x factor)
            data = self.data()
            seed = int(trial.user_attrs.get("train_seed", self.cfg.seed))
            trial.set_user_attr("seed", seed)
            trial.set_user_attr("data_sha256", self._data_sha)
            trial.set_user_attr("model_sha256", self.model_sha)
            if self.weights:
                self._weights_sha = self._weights_sha or sha256_file(self.weights)
                trial.set_user_attr("weights_sha256", self._weights_sha)
            result = self.fit()(data, start or model, hyp, self.train_options(trial.number, seed, imgsz),
                                Callbacks(on_epoch_end=self._epoch_reporter(trial)))
            value = self._record(trial, result, t0)
            if self.cost is not None and not str(result.stop_reason).startswith("callback: pruned"):
                value = [value, self._record_cost(trial, result, imgsz, start, model)]
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("seconds", round(time.time() - t0, 3))
            trial.set_user_attr("fail_reason", fail_reason(e))
            raise
        if str(result.stop_reason).startswith("callback: pruned"):
            raise optuna.TrialPruned(result.stop_reason)
        return value

    def _record_cost(self, trial: optuna.Trial, result: Any, imgsz: int, start: str | None, model_yaml: str) -> float:
        """Measure the trained model's cost at the trial's image size; record every figure; return the objective.
        The trial's checkpoint start, else its model yaml, fixes the architecture."""
        built = start or model_yaml
        model = getattr(result, "model", None)
        if model is None:
            if self._start_model is None or self._start_model[0] != built:
                self._start_model = (built, trial_model(None, start, model_yaml))
            model = self._start_model[1]
        if self.cost == "gflops":  # a count, not a timing: once per image size and architecture
            if (imgsz, built) not in self._gflops:
                self._gflops[imgsz, built] = measure_cost(self.cost, model, imgsz)
            measured = self._gflops[imgsz, built]
        else:
            measured = measure_cost(self.cost, model, imgsz)
        for key, v in measured.items():
            trial.set_user_attr(key, float(v))
        value = float(measured[self.cost])
        if not math.isfinite(value) or value <= 0:
            raise FloatingPointError(f"{self.cost} measured {value}")
        return value

    def _record(self, trial: optuna.Trial, result: Any, t0: float) -> float:
        best = dict(result.best or {})
        history = list(result.history or [])
        # metrics of the epoch the value stands for: the best one, or the last under last/mean_last_K
        shown = best if objective_epochs(self.cfg.objective) is None or not history else dict(history[-1])
        for key in METRIC_ATTRS:
            if key in shown:
                trial.set_user_attr(key, float(shown[key]))
        train_s = sum(float(h.get("seconds", 0.0)) for h in history)
        wall = time.time() - t0
        trial.set_user_attr("epochs", len(history))
        trial.set_user_attr("best_epoch", int(best.get("epoch", -1)))
        trial.set_user_attr("stop_reason", str(result.stop_reason))
        trial.set_user_attr("seconds", round(wall, 3))
        trial.set_user_attr("train_seconds", round(train_s, 3))  # train + val of every epoch
        trial.set_user_attr("overhead_seconds", round(max(wall - train_s, 0.0), 3))
        trial.set_user_attr("best_fitness", float(best.get("fitness", float("nan"))))
        value = objective_value(history, self.cfg.objective)
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.cfg.objective} fitness is {value} (no finite epoch)")
        return value


def objective_value(history: list[Mapping[str, Any]], objective: str) -> float:
    """The trial's value from its per-epoch fitness: best epoch, last epoch, or mean of the last K epochs."""
    values = [float(h["fitness"]) for h in history]
    if not values:
        return float("nan")
    k = objective_epochs(objective)
    if k is None:
        return max(values)
    return sum(values[-k:]) / len(values[-k:])
