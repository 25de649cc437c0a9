"""A study in MLflow, read back from a real local store with MLflow's own client (no mock)."""
from __future__ import annotations

from pathlib import Path

import pytest

from evolve.launcher import prepare_study
from evolve.worker import run_worker
from tests.helpers import fake_fit

pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
from mlflow.tracking import MlflowClient  # noqa: E402


def test_one_mlflow_run_per_trial(cfg_for, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = cfg_for("tracked", trials=3, epochs=2, mlflow=uri)
    run_dir = Path("runs/evolve/tracked")
    study = prepare_study(cfg, None, run_dir)
    run_worker(cfg, run_dir, fit=fake_fit, log=lambda m: None)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tracked")
    runs = {r.data.tags["number"]: r for r in client.search_runs([experiment.experiment_id])}
    trials = {str(t.number): t for t in study.get_trials()}
    assert sorted(runs) == sorted(trials) == ["0", "1", "2"]
    for number, run in runs.items():
        t = trials[number]
        assert run.info.run_name == number and run.data.tags["state"] == "COMPLETE" and run.info.status == "FINISHED"
        assert run.data.metrics["objective"] == pytest.approx(t.value)
        assert float(run.data.params["lr0"]) == pytest.approx(t.params["lr0"])
        fitness = client.get_metric_history(run.info.run_id, "fitness")  # per epoch, while it trained
        assert [m.step for m in fitness] == [0, 1]
        assert [m.value for m in fitness] == pytest.approx([t.intermediate_values[1], t.intermediate_values[2]])
        assert run.data.tags["sampler"] == cfg.sampler  # the trial's user attrs as tags


def test_one_tensorboard_run_per_trial(cfg_for):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from tensorboard.plugins.hparams import plugin_data_pb2
    cfg = cfg_for("boards", trials=3, epochs=2)
    run_dir = Path("runs/evolve/boards")
    study = prepare_study(cfg, None, run_dir)
    run_worker(cfg, run_dir, fit=fake_fit, log=lambda m: None)
    for t in study.get_trials():
        acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard" / f"trial_{t.number}"))
        acc.Reload()
        fitness = acc.Scalars("metrics/fitness")  # per epoch, while it trained
        assert [e.step for e in fitness] == [0, 1]
        assert [e.value for e in fitness] == pytest.approx([t.intermediate_values[1], t.intermediate_values[2]])
        assert acc.Scalars("hparam/objective")[-1].value == pytest.approx(t.value)  # hyps against the value
        start = plugin_data_pb2.HParamsPluginData.FromString(
            acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        assert {k: v.number_value for k, v in start.hparams.items()} == pytest.approx(t.params)
    cfg_off = cfg_for("quiet", trials=2, epochs=2, train={"tensorboard": "off"})
    prepare_study(cfg_off, None, Path("runs/evolve/quiet"))
    run_worker(cfg_off, Path("runs/evolve/quiet"), fit=fake_fit, log=lambda m: None)
    assert not (Path("runs/evolve/quiet") / "tensorboard").exists()
