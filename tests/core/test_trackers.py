"""TensorBoard from a real training, read back from its event files with TensorBoard's own reader (no mock)."""
from __future__ import annotations

import pytest

import core.trackers
from core.run_dir import read_history
from core.train import fit
from tests.helpers import MODEL, train_opts

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard extra is not installed")


def read_events(run_dir):
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_training_in_tensorboard(tiny_data, tmp_path):
    result = fit(tiny_data, MODEL, hyp={"lr0": 0.01},
                 opts=train_opts(tmp_path, epochs=2, batch_size=2, close_mosaic=0, tensorboard="on",
                                  plots=True))
    acc = read_events(result.save_dir)
    tags = acc.Tags()
    history = read_history(result.save_dir / "results.csv")
    for key, tag in (("mAP50", "metrics/mAP50"), ("train_box", "train/box_loss"), ("lr", "x/lr")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [0, 1]
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-5)
    for picture in ("labels", "train_batch0", "PR_curve", "F1_curve", "confusion_matrix", "val_batch0_pred"):
        assert picture in tags["images"], picture
    image = acc.Images("confusion_matrix")[-1]
    assert image.width > 300 and image.height > 300
    from tensorboard.plugins.hparams import plugin_data_pb2
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr0"].number_value == pytest.approx(0.01) and "mosaic" in start.hparams  # the hyps
    assert acc.Scalars("hparam/fitness")[-1].value == pytest.approx(result.best_fitness)  # against the best


def test_tensorboard_off_and_missing(tiny_data, tmp_path, monkeypatch):
    result = fit(tiny_data, MODEL, opts=train_opts(tmp_path, epochs=1, close_mosaic=0, tensorboard="off", plots=False))
    assert not list(result.save_dir.glob("events.out.tfevents*"))
    monkeypatch.setattr(core.trackers, "tensorboard_available", lambda: False)
    assert core.trackers.tensorboard_tracker("auto", tmp_path, {}) is None
    with pytest.raises(ImportError, match=r"\.\[tensorboard\]"):
        core.trackers.tensorboard_tracker("on", tmp_path, {})


def test_training_in_mlflow(tiny_data, tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = fit(tiny_data, MODEL, opts=train_opts(tmp_path / "runs", epochs=2, batch_size=2, close_mosaic=0,
                                                   tensorboard="off", mlflow=uri, plots=True))
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("runs").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    history = read_history(result.save_dir / "results.csv")
    for key in ("mAP50", "train_box", "fitness"):
        values = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in values] == [0, 1]
        assert [m.value for m in values] == pytest.approx([h[key] for h in history], rel=1e-5)
    assert run.data.params["opt.epochs"] == "2" and "hyp.lr0" in run.data.params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.csv", "hyp.yaml", "PR_curve.png", "confusion_matrix.png", "labels.png"} <= artifacts
