"""The pipeline's stage records know what they were computed from: the iterative channel stage is redone with
another --finetune-optimizer, every stage when a label file is edited, each saying why in one line; with
nothing changed every stage is reused (the control). Training is faked: the keys, not the weights, are tested."""
import logging
from pathlib import Path

import pytest

from prune import pipeline
from prune.options import parse_args
from tests.helpers import MODELS, fake_prune_fit, synthetic_yaml


@pytest.fixture
def fits(tmp_path, monkeypatch, caplog):
    """The stages each fake training ran for ((stage, optimizer) per call); prune's INFO lines in caplog."""
    caplog.set_level(logging.INFO, logger="prune")
    calls = []

    monkeypatch.setattr(pipeline, "fit", fake_prune_fit(calls))
    return calls


def run(tmp_path: Path, data: str, *extra: str) -> None:
    pipeline.run(parse_args([
        "--data", data, "--model", str(MODELS / "yolov5-cpu.yaml"), "--epochs", "1", "--global-percent", "0.3",
        "--iterative", "2", "--finetune-epochs", "2", "--round-to", "1", "--imgsz", "64", "--batch-size", "4",
        "--workers", "0", "--threads", "1", "--latency-runs", "1", "--no-onnx-latency", "--project", str(tmp_path),
        "--name", "run", "--no-progress", *extra]))


def test_iterative_channel_stage_is_redone_with_another_finetune_optimizer(tmp_path, fits, caplog):
    data = synthetic_yaml(tmp_path, "d", "[circle, square]", "seed: 0, n_train: 4, n_val: 2, imgsz: 64")
    run(tmp_path, data)
    assert fits == [("baseline", "auto"), ("channel_step1", "auto"), ("finetune", "auto")]
    caplog.clear()
    run(tmp_path, data)
    assert len(fits) == 3 and caplog.text.count("reusing") == 5  # control: every stage
    run(tmp_path, data, "--finetune-optimizer", "SGD")
    assert fits[3:] == [("channel_step1", "SGD"), ("finetune", "SGD")]
    assert "--- channel: redoing, channel.optimizer changed 'auto' -> 'SGD' ---" in caplog.text
    assert "--- layer: redoing, channel was redone ---" in caplog.text


def test_every_stage_is_redone_when_a_label_file_is_edited(tmp_path, fits, caplog):
    data = synthetic_yaml(tmp_path, "d", "[circle, square]", "seed: 0, n_train: 4, n_val: 2, imgsz: 64")
    run(tmp_path, data, "--iterative", "1")
    assert [s for s, _ in fits] == ["baseline", "finetune"]
    label = tmp_path / "shapes" / "labels" / "train" / "000001.txt"
    label.write_text(label.read_text() + "0 0.5 0.5 0.25 0.25\n")
    run(tmp_path, data, "--iterative", "1")
    assert [s for s, _ in fits] == ["baseline", "finetune"] * 2
    assert "--- baseline: redoing, baseline.data changed (labels) ---" in caplog.text
