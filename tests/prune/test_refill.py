"""--refill: channels given back after the share search. compute_masks keeps `grow` extra channels per group (the
best pruned ones by score); the refill grows the cheapest groups first while the target stays met, stops at a
model no single block more would fit; a latency refill compares each grown model with the searched one in one
loop; the pipeline records and reuses it."""
import json
import logging

import pandas as pd
import pytest
import torch

from core.model.info import model_gflops, param_count
from prune import pipeline
from prune import refill as refill_mod
from prune.graph import trace
from prune.masks import MaskOptions, PruneOptionError, compute_masks
from prune.measure import Latency
from prune.options import parse_args
from prune.refill import cost_fits, latency_fits, refill, refill_order
from prune.target import Target, largest_share, pruned_at
from tests.helpers import MODELS, fake_prune_fit, synthetic_yaml

IMGSZ = 64


def floor_masks(model) -> MaskOptions:
    """Every group at its floor (the largest share), channels in blocks of 4."""
    return MaskOptions(global_percent=largest_share(model, 0.01), layer_keep=0.01, round_to=4)


def test_grow_keeps_the_next_best_channels_of_a_group(model):
    graph = trace(model)
    masks = floor_masks(model)
    base, _ = compute_masks(graph, masks)
    name = next(g[0] for g in graph.groups() if len(g) == 1 and base[g[0]].numel() >= int(base[g[0]].sum()) + 8)
    grown, _ = compute_masks(graph, MaskOptions(**{**vars(masks), "grow": {name: 8}}))
    k = int(base[name].sum())
    assert int(grown[name].sum()) == k + 8
    assert bool(grown[name][base[name]].all())  # the kept ones stay
    gamma = graph.convs[name].bn.weight.detach().abs()
    added = gamma[grown[name] & ~base[name]]
    assert float(added.min()) >= float(gamma[~grown[name]].max())  # the added ones are the best of the pruned
    for other in base:
        if other != name and not any(other in g and name in g for g in graph.groups()):
            assert torch.equal(base[other], grown[other]), other
    capped, _ = compute_masks(graph, MaskOptions(**{**vars(masks), "grow": {name: 10_000}}))
    assert bool(capped[name].all())  # never more than the group has
    with pytest.raises(PruneOptionError, match="must be >= 0"):
        compute_masks(graph, MaskOptions(**{**vars(masks), "grow": {name: -4}}))


def test_order_is_cheapest_first_and_low_resolution_is_cheaper(model):
    order = refill_order(model, floor_masks(model), 0, IMGSZ)
    costs = [c for _, c in order]
    assert costs == sorted(costs) and costs[0] > 0
    assert order[0][0] != "model.0"  # the full-resolution stem is not the cheapest block to give back


def test_gflops_refill_meets_the_target_and_no_single_block_more_fits(model):
    masks = floor_masks(model)
    start = model_gflops(pruned_at(model, masks.global_percent, masks, 0), IMGSZ)
    target = Target("GFLOPs", start * 1.1, tolerance=0.0)
    r = refill(model, masks, 0, target, IMGSZ, cost_fits(model, target, IMGSZ), max_evals=10_000, patience=10_000)
    grown = MaskOptions(**{**vars(masks), "grow": r.grow})
    got = model_gflops(pruned_at(model, masks.global_percent, grown, 0), IMGSZ)
    assert start < got <= target.value and r.channels_added == sum(r.grow.values()) > 0
    accepted = [t for t in r.tried if t["accepted"]]
    assert [t["cost"] for t in accepted][-1] == pytest.approx(got, rel=1e-12)
    order = refill_order(model, grown, 0, IMGSZ)
    assert got + order[0][1] > target.value  # maximal: not even the cheapest block more fits


def test_refill_stops_a_pass_after_patience_misses(model):
    calls = []

    def never(m):  # nothing fits: each pass ends after `patience` candidates
        calls.append(m)
        return False, 1.0

    r = refill(model, floor_masks(model), 0, Target("params", 1.0), IMGSZ, never, patience=3)
    assert len(calls) == 3 and r.grow == {} and r.channels_added == 0 and not any(t["accepted"] for t in r.tried)


def test_the_final_check_keeps_the_longest_prefix_of_steps_it_passes(model):
    """Steps timed briefly all 'fit' (noise let them through); the long check passes only up to a budget: the
    steps are undone from the last, and the longest passing prefix is kept."""
    masks = floor_masks(model)
    r_all = refill(model, masks, 0, Target("params", 1.0), IMGSZ, lambda m: (True, param_count(m)), max_evals=12)
    accepted = [t for t in r_all.tried if t["accepted"]]
    assert len(accepted) == 12 and r_all.verified == []
    limit = (accepted[6]["cost"] + accepted[7]["cost"]) / 2  # 7 steps fit, the 8th does not
    r = refill(model, masks, 0, Target("params", 1.0), IMGSZ, lambda m: (True, param_count(m)), max_evals=12,
               verify=lambda m: (param_count(m) <= limit, param_count(m)))
    got = param_count(pruned_at(model, masks.global_percent, MaskOptions(**{**vars(masks), "grow": r.grow}), 0))
    assert got == accepted[6]["cost"]  # the prefix of 7 steps
    assert [v["steps"] for v in r.verified][0] == 12 and not r.verified[0]["fits"]
    assert {v["steps"]: v["fits"] for v in r.verified}.get(7) is True


def test_latency_fits_compares_with_the_searched_model_in_one_loop(model, monkeypatch, tmp_path):
    """The rule on a faked clock: the grown model fits while its median is within the slack of the searched one
    timed beside it, whatever the host's load did to both."""
    seen = []

    def fake_latency(models, imgsz, threads, runs, onnx=None):
        seen.append(sorted(models))
        grown = param_count(models["grown"])
        load = 3.0 if len(seen) % 2 else 1.0  # a busy host every other call: both slow down together
        return {"start": Latency(load * 1.0, load, load, runs), "grown": Latency(load * grown / base, load, load, runs)}

    monkeypatch.setattr(refill_mod, "cpu_latency", fake_latency)
    masks = floor_masks(model)
    start = pruned_at(model, masks.global_percent, masks, 0)
    base = param_count(start)
    fits = latency_fits(start, IMGSZ, 1, 5, "torch", tmp_path, slack=0.01)
    assert fits(start) == (True, 3.0)  # the first call is the busy one: 3x, and still fits
    assert fits(model)[0] is False  # the unpruned model is far slower than the searched one
    assert seen == [["grown", "start"], ["grown", "start"]]


def test_refill_needs_a_target_and_one_shot_pruning():
    with pytest.raises(ValueError, match="--refill needs a --target"):
        pipeline.check_prune_options(parse_args(["--refill", "--shortcuts", "0"]))
    with pytest.raises(ValueError, match="--iterative 3"):
        pipeline.check_prune_options(parse_args(["--refill", "--target-params", "1000", "--iterative", "3"]))


def test_pipeline_refills_to_a_params_target_and_reuses_it(tmp_path, monkeypatch, caplog, capsys):
    """Training faked: the share found for a params target, then the refill's channels on top; the channel stage
    prunes with them (its record holds them), the model is closer to the target than the share alone left it, the
    table line names the refill, a rerun reuses it."""
    caplog.set_level(logging.INFO, logger="prune")
    monkeypatch.setattr(pipeline, "fit", fake_prune_fit())
    # the share search lands within a channel of an exact target; a budget 2% above it leaves the refill room
    monkeypatch.setattr(pipeline, "cost_fits",
                        lambda m, target, imgsz: cost_fits(m, Target("params", target.value * 1.02, 0.0), imgsz))
    data = synthetic_yaml(tmp_path, "d", "[circle, square]", "seed: 0, n_train: 4, n_val: 2, imgsz: 64")
    argv = ["--data", data, "--model", str(MODELS / "yolov5-cpu.yaml"), "--epochs", "1", "--finetune-epochs", "1",
            "--round-to", "4", "--imgsz", "64", "--batch-size", "4", "--workers", "0", "--threads", "1",
            "--latency-runs", "1", "--no-onnx-latency", "--project", str(tmp_path), "--name", "run", "--no-progress",
            "--target-params", "150000", "--target-tolerance", "0.0", "--shortcuts", "0", "--refill"]
    pipeline.run(parse_args(argv))
    run = tmp_path / "run"
    found, filled = (json.loads((run / f).read_text()) for f in ("target.json", "refill.json"))
    channel = json.loads((run / "channel.json").read_text())
    assert channel["options"]["channel"]["grow"] == filled["grow"] and filled["channels_added"] > 0
    df = pd.read_csv(run / "prune_results.csv").set_index("stage")
    assert found["achieved"] < df.loc["channel", "params"] <= 153000  # the refill spent the room it was given
    accepted = [t["cost"] for t in filled["tried"] if t["accepted"]]
    assert accepted[-1] == df.loc["channel", "params"]  # the stage pruned with exactly the masks the refill chose
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("target params <= 150000"))
    assert f"refill: +{filled['channels_added']} channels" in line
    caplog.clear()
    pipeline.run(parse_args(argv))
    assert "refill: reusing" in caplog.text and "growing" not in caplog.text
