"""Pruning to a target: the share search meets GFLOPs, parameter and (faked) latency targets on a tiny model with
the least pruning it can, says which figure is the closest when a target is out of reach, and the pipeline runs
its stages at the share it found and prints target vs achieved."""
import json
import logging

import pandas as pd
import pytest

from core.checkpoint import model_from_checkpoint
from core.model.info import model_gflops, param_count
from prune import pipeline
from prune.masks import MaskOptions
from prune.measure import Latency
from prune.options import parse_args
from prune.layers import rank_shortcuts
from prune.target import (Target, TargetUnreachable, fewest_shortcuts, find_share, largest_share, prunable_count,
                          pruned_at, search_share)
from tests.helpers import MODELS, fake_prune_fit, synthetic_yaml

MASKS = MaskOptions(global_percent=0.0, layer_keep=0.01, round_to=1)
IMGSZ = 64


def least_pruning(model, result, cost, shortcuts: int, n: int) -> bool:
    """Within the tolerance below the target too, or one channel's share less pruning would miss the target."""
    t = result.target
    if result.achieved >= t.value * (1 - t.tolerance):
        return True
    return cost(pruned_at(model, result.share - 1.0 / n, MASKS, shortcuts)) > t.value * (1 + t.tolerance)


def test_bisection_finds_the_smallest_share_of_a_step_cost():
    """A cost that falls in steps of 0.1 share: the first share at or under the target, to the resolution."""
    def cost(share):  # 100 at share 0, 90 from share 0.1, ... (the model is the share itself)
        return 100.0 - 10.0 * int(share * 10 + 1e-9)

    r = search_share(lambda s: s, cost, Target("params", 65.0, tolerance=0.0), hi=0.99, resolution=1e-3)
    assert r.achieved == 60.0 and 0.4 <= r.share < 0.401
    assert cost(r.share - 1e-3) > 65.0  # one resolution step less pruning misses the target
    assert search_share(lambda s: s, cost, Target("params", 150.0), hi=0.99).share == 0.0  # met unpruned


def test_gflops_target_is_met_within_tolerance_on_a_tiny_model(model):
    base = model_gflops(model, IMGSZ)
    target = Target("GFLOPs", 0.6 * base, tolerance=0.02)
    r = find_share(model, target, MASKS, shortcuts=1, imgsz=IMGSZ)
    real = model_gflops(pruned_at(model, r.share, MASKS, 1), IMGSZ)
    assert r.met and real == pytest.approx(r.achieved, rel=1e-12)  # the figure is the real pruned model's
    assert real <= target.value * 1.02 and len(r.trials) <= 20
    assert least_pruning(model, r, lambda m: model_gflops(m, IMGSZ), 1, prunable_count(model))


def test_params_target_is_met_with_the_least_pruning(model):
    target = Target("params", 0.5 * param_count(model), tolerance=0.0)  # no band: bisected to one channel's share
    r = find_share(model, target, MASKS, shortcuts=0, imgsz=IMGSZ)
    assert r.achieved == param_count(pruned_at(model, r.share, MASKS, 0)) <= target.value
    assert least_pruning(model, r, param_count, 0, prunable_count(model))


def test_latency_target_is_searched_with_the_injected_timer(model):
    timed = []

    def fake_timer(m):  # 1 ms plus 1 ms per 100k parameters: no clock involved
        timed.append(m)
        return 1.0 + param_count(m) / 1e5

    target = Target("latency_ms", 1.0 + 0.6 * param_count(model) / 1e5, tolerance=0.05)
    r = find_share(model, target, MASKS, shortcuts=0, imgsz=IMGSZ, timer=fake_timer)
    assert len(timed) == len(r.trials) and target.value * 0.95 <= r.achieved <= target.value * 1.05
    assert r.achieved == fake_timer(pruned_at(model, r.share, MASKS, 0))
    with pytest.raises(ValueError, match="needs a timer"):
        find_share(model, target, MASKS, shortcuts=0, imgsz=IMGSZ)


def test_unreachable_target_names_the_closest_figure(model):
    hi = largest_share(model, MASKS.layer_keep)
    closest = param_count(pruned_at(model, hi, MASKS, 0))
    with pytest.raises(TargetUnreachable) as e:
        find_share(model, Target("params", closest // 2), MASKS, shortcuts=0, imgsz=IMGSZ)
    assert f"{closest:,} params" in str(e.value) and f"--target-params {closest // 2} cannot be met" in str(e.value)
    assert "closest achievable" in str(e.value)


def test_auto_shortcuts_removes_the_fewest_blocks_that_meet_the_target(model):
    """--shortcuts auto: a target between what 1 and 2 removed blocks leave at the largest share needs 2 of them."""
    hi, n = largest_share(model, MASKS.layer_keep), len(rank_shortcuts(model))
    at = [param_count(pruned_at(model, hi, MASKS, k)) for k in range(n + 1)]
    assert n >= 3 and at[1] > at[2] > at[3]
    k, tried = fewest_shortcuts(model, Target("params", (at[1] + at[2]) / 2, tolerance=0.0), MASKS, n, IMGSZ)
    assert k == 2 and tried == [(0, at[0]), (1, at[1]), (2, at[2])]
    assert fewest_shortcuts(model, Target("params", at[0] * 1.0001), MASKS, n, IMGSZ)[0] == 0
    with pytest.raises(TargetUnreachable, match=f"{at[n]:,} params .* closest achievable"):
        fewest_shortcuts(model, Target("params", at[n] / 2, tolerance=0.0), MASKS, n, IMGSZ)


def test_auto_shortcuts_needs_a_target():
    with pytest.raises(ValueError, match="--shortcuts auto needs a --target"):
        pipeline.check_prune_options(parse_args(["--shortcuts", "auto"]))


def test_pipeline_prunes_to_a_params_target_and_prints_target_vs_achieved(tmp_path, monkeypatch, caplog, capsys):
    """Training faked (the baseline a random model, later stages return the model as is): the channel stage runs
    at the share the search found, the table line says target vs achieved, a rerun reuses the search."""
    caplog.set_level(logging.INFO, logger="prune")

    monkeypatch.setattr(pipeline, "fit", fake_prune_fit())
    data = synthetic_yaml(tmp_path, "d", "[circle, square]", "seed: 0, n_train: 4, n_val: 2, imgsz: 64")
    argv = ["--data", data, "--model", str(MODELS / "yolov5-cpu.yaml"), "--epochs", "1", "--finetune-epochs", "1",
            "--round-to", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0", "--threads", "1",
            "--latency-runs", "1", "--no-onnx-latency", "--project", str(tmp_path), "--name", "run", "--no-progress",
            "--target-params", "200000", "--target-tolerance", "0.05"]
    pipeline.run(parse_args(argv))
    run = tmp_path / "run"
    found = json.loads((run / "target.json").read_text())
    channel = json.loads((run / "channel.json").read_text())
    assert channel["options"]["channel"]["global_percent"] == found["share"] > 0
    df = pd.read_csv(run / "prune_results.csv").set_index("stage")
    assert 200000 * 0.95 <= df.loc["finetune", "params"] <= 200000 * 1.05
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("target params <= 200000"))
    assert "(tolerance +5%)" in line and line.endswith(": met")
    assert "searching the global share" in caplog.text
    caplog.clear()
    pipeline.run(parse_args(argv))
    assert "searching" not in caplog.text and "target: reusing the share" in caplog.text


def test_pipeline_prunes_to_a_speedup_over_the_start_models_own_latency(tmp_path, monkeypatch, capsys):
    """--target-speedup 2: the start model is timed first (a faked timer: 1 ms per 100k parameters) and the target
    is half its latency; each candidate is then timed beside the start (paired) and costed as the start's figure x
    their ratio; target.json records the speedup and the start's figure, and a rerun reuses both without timing
    anything."""
    timed = []

    def fake_latency(m, *a, **k):
        timed.append(m)
        ms = param_count(m) / 1e5
        return Latency(ms, ms, ms, 1)

    def fake_paired(m, start, *a, **k):  # the start reads 10% slower in the candidates' loops: load drifted
        return fake_latency(m), Latency(*[param_count(start) / 1e5 * 1.1] * 3, 1)

    monkeypatch.setattr(pipeline, "fit", fake_prune_fit())
    monkeypatch.setattr(pipeline, "model_latency", fake_latency)
    monkeypatch.setattr(pipeline, "paired_latency", fake_paired)
    data = synthetic_yaml(tmp_path, "d", "[circle, square]", "seed: 0, n_train: 4, n_val: 2, imgsz: 64")
    argv = ["--data", data, "--model", str(MODELS / "yolov5-cpu.yaml"), "--epochs", "1", "--finetune-epochs", "1",
            "--round-to", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0", "--threads", "1",
            "--latency-runs", "1", "--no-onnx-latency", "--latency-backend", "torch", "--project", str(tmp_path),
            "--name", "run", "--no-progress", "--target-speedup", "2", "--target-tolerance", "0.05"]
    pipeline.run(parse_args(argv))
    found = json.loads((tmp_path / "run" / "target.json").read_text())
    start = param_count(model_from_checkpoint(tmp_path / "run" / "baseline.pt")) / 1e5
    assert found["speedup"] == 2 and found["start_ms"] == pytest.approx(start, rel=1e-12)
    assert found["target"]["value"] == pytest.approx(start / 2, rel=1e-12) and found["met"]
    # each candidate costed in the start's milliseconds from its paired loop: its own figure / 1.1, so the share
    # found prunes to about 1.1 x half the start (a drifting load cancels instead of moving the target)
    assert start / 2 * 0.95 <= found["achieved"] <= start / 2 * 1.05
    pruned = model_from_checkpoint(tmp_path / "run" / "channel.pt")
    assert param_count(pruned) / 1e5 == pytest.approx(found["achieved"] * 1.1, rel=1e-9)
    assert "(2x faster than the start's" in capsys.readouterr().out
    timed.clear()
    pipeline.run(parse_args(argv))
    assert timed == []  # the start's latency and the share both reused
    with pytest.raises(pipeline.PruneOptionError, match=r"--target-speedup 0.8 must be > 1"):
        pipeline.check_prune_options(parse_args(["--target-speedup", "0.8"]))
    with pytest.raises(pipeline.PruneOptionError, match="one target at a time"):
        pipeline.check_prune_options(parse_args(["--target-speedup", "2", "--target-gflops", "0.1"]))


def test_pipeline_with_auto_shortcuts_records_and_reuses_the_count(tmp_path, monkeypatch, caplog):
    """A params target out of the share's reach without layer removal: the pipeline removes the fewest blocks
    that meet it, records the count in target.json, and a rerun reuses both."""
    caplog.set_level(logging.INFO, logger="prune")
    monkeypatch.setattr(pipeline, "fit", fake_prune_fit())
    data = synthetic_yaml(tmp_path, "d", "[circle, square]", "seed: 0, n_train: 4, n_val: 2, imgsz: 64")
    base = fake_prune_fit()({"nc": 2}, str(MODELS / "yolov5-cpu.yaml"), None, None).model  # the baseline it trains
    hi = largest_share(base, 0.01)
    target = (param_count(pruned_at(base, hi, MASKS, 0)) + param_count(pruned_at(base, hi, MASKS, 1))) // 2
    argv = ["--data", data, "--model", str(MODELS / "yolov5-cpu.yaml"), "--epochs", "1", "--finetune-epochs", "1",
            "--round-to", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0", "--threads", "1",
            "--latency-runs", "1", "--no-onnx-latency", "--project", str(tmp_path), "--name", "run", "--no-progress",
            "--target-params", str(target), "--target-tolerance", "0.0", "--shortcuts", "auto"]
    pipeline.run(parse_args(argv))
    found = json.loads((tmp_path / "run" / "target.json").read_text())
    layer = json.loads((tmp_path / "run" / "layer.json").read_text())
    assert found["shortcuts_chosen"] == 1 == layer["options"]["layer"]["shortcuts"]
    assert [k for k, _ in found["shortcuts_tried"]] == [0, 1] and found["met"]
    caplog.clear()
    pipeline.run(parse_args(argv))
    assert "fewest shortcut blocks" not in caplog.text and "target: reusing the share" in caplog.text
