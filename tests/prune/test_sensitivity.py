"""Per-layer sensitivity (prune/sensitivity.py) and the layer-adaptive allocations (prune/allocation.py): a group
masked at share 0 loses nothing, the gammas come back, LAMP scores by hand, and every allocation meets the same
GFLOPs target while spreading the pruning differently over the layers."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from core.model.info import model_gflops
from prune import pipeline
from prune.allocation import channel_scores, lamp_scores, sensitivity_weights, weight_l1_scores
from prune.graph import trace
from prune.masks import MaskOptions, compute_masks
from prune.options import parse_args
from prune.sensitivity import SensitivityError, group_keep, load_sensitivity, measure_sensitivity
from prune.target import Target, find_share, pruned_at
from tests.helpers import MODELS, fake_prune_fit, synthetic_yaml

IMGSZ = 64


def output_score(model) -> float:
    """A deterministic stand-in for mAP: the mean objectness of a fixed image."""
    torch.manual_seed(0)
    with torch.no_grad():
        return float(model(torch.rand(1, 3, IMGSZ, IMGSZ))[0][..., 4].mean())


def test_a_group_masked_at_share_zero_loses_nothing_and_the_gammas_come_back(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    df = measure_sensitivity(model, output_score, shares=[0.0, 0.75], progress=False)
    groups = len(trace(model).groups())
    assert len(df) == 2 * groups
    none = df[df["share"] == 0.0]
    assert (none["masked"] == 0).all() and (none["drop"] == 0.0).all()  # an all-ones mask changes no weight
    most = df[df["share"] == 0.75]
    assert (most["masked"] > 0).all() and (most["drop"].abs() > 1e-6).sum() > groups // 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # every group restored


def test_group_keep_keeps_the_top_scores_and_at_least_one():
    score = torch.tensor([0.3, 0.1, 0.9, 0.5])
    assert group_keep(score, 0.5).tolist() == [False, False, True, True]
    assert group_keep(score, 0.99).tolist() == [False, False, True, False]  # one channel always stays


def test_lamp_scores_by_hand():
    # gamma^2 = 9, 1, 4; ascending 1, 4, 9 with tails 14, 13, 9: scores 1/14, 4/13, 9/9, in the input's order
    assert lamp_scores(torch.tensor([3.0, -1.0, 2.0])).tolist() == pytest.approx([1.0, 1 / 14, 4 / 13])
    assert lamp_scores(torch.ones(4)).tolist() == pytest.approx([1 / 4, 1 / 3, 1 / 2, 1.0])  # ties: stable order
    assert lamp_scores(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]  # a dead layer: no division by zero


def test_sensitivity_weights_follow_the_measured_drops():
    w = sensitivity_weights({"a": 0.0, "b": 0.02, "c": 0.04}, ["a", "b", "c", "d"])
    assert w["a"] < w["b"] < w["c"] and w["d"] == 1.0  # d was not measured
    assert w["b"] == pytest.approx((0.02 + 1e-3) / (0.02 + 1e-3))  # the mean drop weighs 1


@pytest.mark.parametrize("allocation", ["global", "lamp", "l1", "sensitivity"])
def test_every_allocation_meets_the_same_gflops_target(model, allocation):
    names = list(trace(model).convs)
    drops = {n: 0.05 if i % 3 == 0 else 0.0 for i, n in enumerate(names)}  # every third conv 'sensitive'
    masks = MaskOptions(0.0, 0.01, 1, allocation, drops if allocation == "sensitivity" else None)
    target = Target("GFLOPs", 0.6 * model_gflops(model, IMGSZ), tolerance=0.02)
    r = find_share(model, target, masks, shortcuts=0, imgsz=IMGSZ)
    assert r.met and model_gflops(pruned_at(model, r.share, masks, 0), IMGSZ) <= target.value * 1.02


def test_l1_scores_by_hand(model):
    """model.0's channels are read by model.1 alone: score = (L1 of model.0's output weights + L1 of model.1's
    input weights at that channel) / the layer's mean; a shortcut's members each count the consumers' reads."""
    graph = trace(model)
    w0, w1 = graph.convs["model.0"].conv.weight.detach(), graph.convs["model.1"].conv.weight.detach()
    raw = w0.abs().sum((1, 2, 3)) + w1.abs().sum((0, 2, 3))
    assert readers(graph, "model.0") == ["model.1"]
    assert weight_l1_scores(graph)["model.0"].tolist() == pytest.approx((raw / raw.mean()).tolist(), rel=1e-5)
    scores = channel_scores(graph, "l1")
    assert all(float(v.mean()) == pytest.approx(1.0, rel=1e-5) for v in scores.values())


def readers(graph, name: str) -> list[str]:
    return [c.name for c in graph.consumers if any(name in seg for seg in c.inputs)]


def test_allocations_spread_the_pruning_differently(model):
    graph = trace(model)
    names = list(graph.convs)
    drops = {n: 0.05 if i % 3 == 0 else 0.0 for i, n in enumerate(names)}
    kept = {}
    for allocation in ("global", "lamp", "l1", "sensitivity"):
        masks, _ = compute_masks(graph, MaskOptions(0.5, 0.01, 1, allocation, drops))
        kept[allocation] = {n: int(m.sum()) for n, m in masks.items()}
    assert kept["lamp"] != kept["global"] and kept["sensitivity"] != kept["global"] and kept["l1"] != kept["global"]
    sensitive = [n for n in names if drops[n] > 0]
    assert sum(kept["sensitivity"][n] for n in sensitive) > sum(kept["global"][n] for n in sensitive)
    scores = channel_scores(graph, "lamp")
    assert all(float(v.max()) == pytest.approx(1.0) for v in scores.values() if float(v.max()) > 0)


def test_a_bad_sensitivity_file_names_line_and_value(tmp_path):
    good = tmp_path / "s.csv"
    good.write_text("group,convs,share,channels,masked,mAP50-95,drop\nm.0,m.0 m.1,0.5,8,4,0.1,0.02\n"
                    "m.0,m.0 m.1,0.75,8,6,0.08,0.04\nm.2,m.2,0.5,8,4,0.12,0.0\n")
    assert load_sensitivity(good) == pytest.approx({"m.0": 0.03, "m.1": 0.03, "m.2": 0.0})
    bad = tmp_path / "b.csv"
    bad.write_text("group,convs,share,channels,masked,mAP50-95,drop\nm.0,m.0,0.5,8,4,0.1,oops\n")
    with pytest.raises(SensitivityError, match=r"b.csv, line 2: drop 'oops'"):
        load_sensitivity(bad)


def test_pipeline_records_the_allocation_and_meets_the_target(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "fit", fake_prune_fit())
    data = synthetic_yaml(tmp_path, "d", "[circle, square]", "seed: 0, n_train: 4, n_val: 2, imgsz: 64")
    argv = ["--data", data, "--model", str(MODELS / "yolov5-cpu.yaml"), "--epochs", "1", "--finetune-epochs", "0",
            "--round-to", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0", "--threads", "1",
            "--latency-runs", "1", "--no-onnx-latency", "--project", str(tmp_path), "--name", "run", "--no-progress",
            "--target-params", "200000", "--target-tolerance", "0.05", "--allocation", "lamp"]
    pipeline.run(parse_args(argv))
    channel = json.loads((tmp_path / "run" / "channel.json").read_text())
    assert channel["options"]["channel"]["allocation"] == "lamp"
    df = pd.read_csv(tmp_path / "run" / "prune_results.csv").set_index("stage")
    assert df.loc["finetune", "params"] <= 200000 * 1.05
