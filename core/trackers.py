"""Experiment trackers a training reports to, beside its run folder: TensorBoard (the `tensorboard` extra) and
MLflow (the `mlflow` extra).

`TensorBoardTracker` writes the run's event file into the run folder, so `tensorboard --logdir runs` shows
every training: per epoch the scalars of results.csv (train/box_loss ..., metrics/mAP50 ..., x/lr), the
pictures of core/plots.py as images (labels and training batches at the start, the curves, the confusion
matrix and validation batches at the end), and the hyps as hparams with the best epoch's metrics.
`TrainOptions.tensorboard`: 'auto' (default: on when the package is installed), 'on' (an error names the
extra when it is not), 'off'. Only rank 0 of a saving run reports.

`MLflowTracker` (`TrainOptions.mlflow` = a tracking URI, e.g. `sqlite:///mlflow.db` or a server's URL; off by
default): one MLflow run per training in the experiment named after the project folder (`runs/train` ->
`train`), run name = the run folder's: the hyps and options as params, results.csv's columns as metrics every
epoch, and at the end the pictures, results.csv, hyp.yaml and opt.yaml as artifacts. Evolution logs its
trials itself (evolve/tracking.py: one run per trial through optuna-integration's MLflowCallback).
"""
from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import cv2

__all__ = ["METRIC_NAMES", "MLflowTracker", "SCALARS", "TRACKER_MODES", "TensorBoardTracker",
           "tensorboard_available", "tensorboard_tracker"]

LOGGER = logging.getLogger(__name__)

TRACKER_MODES = ("auto", "on", "off")
SCALARS = {"train_box": "train/box_loss", "train_obj": "train/obj_loss", "train_cls": "train/cls_loss",
           "P": "metrics/precision", "R": "metrics/recall", "mAP50": "metrics/mAP50", "mAP50-95": "metrics/mAP50-95",
           "fitness": "metrics/fitness", "val_box": "val/box_loss", "val_obj": "val/obj_loss",
           "val_cls": "val/cls_loss", "lr": "x/lr", "seconds": "x/epoch_seconds"}


METRIC_NAMES = ("train_box", "train_obj", "train_cls", "P", "R", "mAP50", "mAP50-95", "fitness", "val_box",
                "val_obj", "val_cls", "lr", "seconds")  # what MLflow gets per epoch, under these names


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_tracker(mode: str, log_dir: Path | str, hyp: Mapping[str, float]) -> "TensorBoardTracker | None":
    """The tracker `mode` asks for: None for 'off', or for 'auto' without the package."""
    if mode not in TRACKER_MODES:
        raise ValueError(f"tensorboard={mode!r} must be one of {', '.join(TRACKER_MODES)}")
    if mode == "off" or (mode == "auto" and not tensorboard_available()):
        return None
    if not tensorboard_available():
        raise ImportError("tensorboard='on' needs the tensorboard package: pip install -e '.[tensorboard]'")
    return TensorBoardTracker(log_dir, hyp)


class TensorBoardTracker:
    """One run's TensorBoard events in `log_dir` (the run folder)."""

    def __init__(self, log_dir: Path | str, hyp: Mapping[str, float]):
        from torch.utils.tensorboard import SummaryWriter  # optional: the `tensorboard` extra
        self.log_dir, self.hyp = Path(log_dir), dict(hyp)
        self.writer = SummaryWriter(str(self.log_dir))
        self.logged: set[str] = set()

    def epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        for key, tag in SCALARS.items():
            if key in metrics:
                self.writer.add_scalar(tag, float(metrics[key]), epoch)
        self.writer.flush()

    def images(self, pictures: Mapping[str, Path], step: int) -> None:
        """The pictures not logged yet (results.png, redrawn every epoch, is left to the scalars)."""
        from tensorboard.compat.proto.summary_pb2 import Summary  # optional: the `tensorboard` extra
        for name, path in pictures.items():
            if name in self.logged or name == "results":
                continue
            img = cv2.imread(str(path))
            if img is None:
                continue
            # The file's own PNG/JPEG bytes, as TensorBoard stores them: add_image would re-encode every picture
            # with PIL (about a second per 1024 px batch mosaic, most of the pictures' cost in a run)
            image = Summary.Image(height=img.shape[0], width=img.shape[1], colorspace=3,
                                  encoded_image_string=Path(path).read_bytes())
            self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=name, image=image)]), step)
            self.logged.add(name)
        self.writer.flush()

    def finish(self, best: Mapping[str, Any], pictures: Mapping[str, Path], step: int) -> None:
        """The end pictures, then the hyps as hparams against the best epoch's metrics."""
        self.images(pictures, step)
        metrics = {f"hparam/{k}": float(best[k]) for k in ("P", "R", "mAP50", "mAP50-95", "fitness") if k in best}
        self.writer.add_hparams({k: float(v) for k, v in self.hyp.items()}, metrics, run_name=".")
        self.writer.close()


class MLflowTracker:
    """One training as one MLflow run (through MlflowClient: no process-wide active run is touched)."""

    def __init__(self, uri: str, save_dir: Path | str, hyp: Mapping[str, float], options: Mapping[str, Any]):
        from mlflow.tracking import MlflowClient  # optional: the `mlflow` extra
        self.save_dir = Path(save_dir)
        self.client = MlflowClient(uri)
        name = self.save_dir.parent.name or "train"
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment, run_name=self.save_dir.name,
                                             tags={"run_dir": str(self.save_dir)}).info.run_id
        params = {**{f"hyp.{k}": v for k, v in hyp.items()},
                  **{f"opt.{k}": v for k, v in options.items() if isinstance(v, (int, float, str, bool)) or v is None}}
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(metrics[k]), stamp, epoch)
                                                    for k in METRIC_NAMES if k in metrics])

    def finish(self, pictures: Mapping[str, Path], status: str = "FINISHED") -> None:
        """The pictures and the run folder's tables as artifacts; the run ends with `status`."""
        files = list(pictures.values()) + [self.save_dir / f for f in ("results.csv", "hyp.yaml", "opt.yaml")]
        for path in files:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status)
