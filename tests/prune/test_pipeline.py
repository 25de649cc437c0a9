"""End to end on a tiny synthetic dataset: stages, rows, reusable plain checkpoints, skips, errors."""
import importlib.util
import json
import logging
import re

import pandas as pd
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from core.model.yolo import Model, is_anchor_free
from prune import pipeline
from prune.layers import rank_shortcuts
from prune.masks import PruneOptionError
from prune.report import classic_table
from tests.helpers import MODELS

STAGES = ["baseline", "sparse", "keep_size", "unstructured", "channel", "layer", "finetune"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    data = root / "tiny.yaml"
    data.write_text("path: shapes\ntrain: images/train\nval: images/val\nnames: {0: circle, 1: square}\n"
                    "synthetic: {seed: 0, n_train: 32, n_val: 8, imgsz: 64}\n")
    return root, data


def args(root, data, *extra):
    return ["--data", str(data), "--model", str(MODELS / "yolov5-cpu.yaml"), "--epochs", "1", "--sr",
            "--s", "0.01", "--sparse-epochs", "1", "--finetune-epochs", "1", "--global-percent", "0.4",
            "--shortcuts", "2", "--imgsz", "64", "--batch-size", "8", "--nbs", "16", "--workers", "0", "--threads", "1",
            "--latency-runs", "3", "--unstructured", "0.3", "--round-to", "auto",
            "--project", str(root), "--name", "run", "--no-progress", *extra]


def test_pipeline_runs_resumes_and_invalidates(tiny, capsys, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="prune")
    root, data = tiny
    steps, in_sparse = [], []
    original = pipeline.Pipeline.sparse

    def counted_sparse(self, model):  # optimizer steps taken while the sparse stage trains
        n0 = len(steps)
        out = original(self, model)
        in_sparse.append(len(steps) - n0)
        return out

    monkeypatch.setattr(pipeline.Pipeline, "sparse", counted_sparse)
    handle = register_optimizer_step_post_hook(lambda *a: steps.append(1))
    try:
        assert pipeline.main(args(root, data)) == 0
    finally:
        handle.remove()
    run = root / "run"
    df = pd.read_csv(run / "prune_results.csv")
    assert list(df["stage"]) == STAGES
    for col in ("P", "R", "mAP50", "mAP50-95", "fitness", "params", "GFLOPs", "latency_ms", "ckpt_MB",
                "channels_kept", "channels_pruned", "prune_ratio", "threads"):
        assert df[col].notna().all(), col
    base, final = df.iloc[0], df.iloc[-1]
    assert final["GFLOPs"] < base["GFLOPs"] and final["params"] < base["params"]
    assert (df["latency_p25_ms"] <= df["latency_ms"]).all() and (df["latency_ms"] <= df["latency_p75_ms"]).all()
    spread = json.loads((root / "run" / "latency.json").read_text())["ms"]
    assert spread["finetune"]["median"] == pytest.approx(final["latency_ms"]) and spread["finetune"]["runs"] == 3
    assert final["channels_kept"] + final["channels_pruned"] == base["channels_kept"]
    out = capsys.readouterr().out
    assert "Before" in out and "After channels" in out and "After finetune" in out and "speedup" in out
    if importlib.util.find_spec("onnxruntime"):  # every stage exported, checked and timed in onnxruntime too
        assert df["onnx_latency_ms"].gt(0).all()
        assert sorted(p.stem for p in (run / "onnx").glob("*.onnx")) == sorted(STAGES)
        assert re.search(r"onnxruntime [0-9.]+ -> [0-9.]+ ms \(speedup", out)
        # the last stage quantized to INT8 (prune/int8.py): scored, timed in the same loop, a column of the table
        int8 = json.loads((run / "int8.json").read_text())
        assert int8["from"] == "finetune" and int8["onnx_latency_ms"] > 0 and 0 <= int8["mAP50-95"] <= 1
        assert 0 < int8["onnx_MB"] < 0.5 * (run / "onnx" / "finetune.onnx").stat().st_size / 1e6
        assert "INT8 (onnxruntime)" in out and re.search(r"onnx_MB( +[0-9.]+){8}", out)
    assert re.search(r"round-to: kept channels rounded up to a multiple of (8|16) \(CPU AVX", caplog.text)
    # keep-size: full size, the pruned gammas zeroed; unstructured: full size, ~30% of conv weights zero
    rows = df.set_index("stage")
    assert rows.loc["keep_size", "params"] == base["params"] and rows.loc["unstructured", "params"] == base["params"]
    assert rows.loc["keep_size", "channels_kept"] == base["channels_kept"]
    unstr = json.loads((run / "unstructured.json").read_text())["extra"]
    assert 0.29 < unstr["conv_sparsity"] < 0.31 and unstr["global_sparsity"] < unstr["conv_sparsity"]
    per_layer = pd.read_csv(run / "unstructured.csv")
    assert len(per_layer) > 50 and per_layer["sparsity"].between(0.29, 0.31).all()
    for name in ("stages.png", "gamma.png", "channels.png", "channels.csv", "gamma.jsonl"):
        assert (run / name).stat().st_size > 0, name

    # 32 images, batch 8, nbs 16: 4 backward passes and 2 optimizer steps in the sparse epoch;
    # the penalty was applied once per optimizer step, not per micro-batch
    sparse = json.loads((run / "sparse.json").read_text())
    assert in_sparse == [2] and sparse["extra"]["optimizer_steps"] == 2
    gamma_rows = [json.loads(x) for x in (run / "gamma.jsonl").read_text().splitlines()]
    assert gamma_rows[-1]["steps"] == sparse["extra"]["optimizer_steps"]

    # every stage checkpoint is a plain core checkpoint; the layer stage removed 2 blocks
    for stage in STAGES:
        ckpt = load_checkpoint(run / f"{stage}.pt")
        model = model_from_checkpoint(ckpt)
        assert model(torch.zeros(1, 3, 64, 64))[0].shape[-1] == 7
    assert len(rank_shortcuts(model_from_checkpoint(run / "layer.pt"))) == 7 - 2
    channels = pd.read_csv(run / "channels.csv")
    assert (channels["after_layer"] == 0).sum() == 4  # cv1 and cv2 of the 2 removed blocks

    # re-run: everything reused; then a changed layer option redoes only layer and finetune
    mtimes = {s: (run / f"{s}.pt").stat().st_mtime_ns for s in STAGES}
    caplog.clear()
    assert pipeline.main(args(root, data)) == 0
    assert "reusing" in caplog.text
    assert all((run / f"{s}.pt").stat().st_mtime_ns == mtimes[s] for s in STAGES)
    assert pipeline.main(args(root, data, "--shortcuts", "1")) == 0
    after = {s: (run / f"{s}.pt").stat().st_mtime_ns for s in STAGES}
    assert [s for s in STAGES if after[s] != mtimes[s]] == ["layer", "finetune"]
    # a side row's option redoes only that row
    assert pipeline.main(args(root, data, "--shortcuts", "1", "--unstructured", "0.5")) == 0
    again = {s: (run / f"{s}.pt").stat().st_mtime_ns for s in STAGES}
    assert [s for s in STAGES if again[s] != after[s]] == ["unstructured"]
    assert len(rank_shortcuts(model_from_checkpoint(run / "layer.pt"))) == 7 - 1
    assert "After layers" in classic_table(pd.read_csv(run / "prune_results.csv"))
    # no finetune: its row is the layer stage's model as it is
    assert pipeline.main(args(root, data, "--shortcuts", "1", "--unstructured", "0.5", "--finetune-epochs", "0")) == 0
    layer_sd = model_from_checkpoint(run / "layer.pt").state_dict()
    assert all(torch.equal(v, layer_sd[k]) for k, v in model_from_checkpoint(run / "finetune.pt").state_dict().items())
    # the penalty is a sparse-stage option: sparse and every chain stage after it are redone
    before = {s: (run / f"{s}.pt").stat().st_mtime_ns for s in STAGES}
    assert pipeline.main(args(root, data, "--shortcuts", "1", "--unstructured", "0.5", "--finetune-epochs", "0",
                              "--penalty", "l1")) == 0
    redone = [s for s in STAGES if (run / f"{s}.pt").stat().st_mtime_ns != before[s]]
    assert redone == STAGES[1:]
    assert json.loads((run / "sparse.json").read_text())["options"]["sparse"]["penalty"] == "l1"


@pytest.mark.parametrize("flag,value,message", [
    ("--global-percent", "1.0", r"--global-percent: '1.0' must be in \[0, 1\)"),
    ("--global-percent", "-0.2", r"--global-percent: '-0.2' must be in \[0, 1\)"),
    ("--shortcuts", "-1", r"--shortcuts: '-1' must be an integer >= 0"),
])
def test_bad_options_exit_2(tiny, capsys, flag, value, message):
    root, data = tiny
    assert pipeline.main(args(root, data, flag, value, "--name", "bad")) == 2
    assert re.search(message, capsys.readouterr().err)


def test_weights_with_other_architecture_is_an_error(tiny, tmp_path):
    root, data = tiny
    other = Model(str(MODELS / "yolov5n.yaml"), nc=2)
    w = save_checkpoint(tmp_path / "n.pt", other, hyp={}, metrics={}, epoch=0)
    opts = pipeline.parse_args(args(root, data, "--weights", str(w), "--name", "w"))
    with pytest.raises(PruneOptionError, match=r"--weights .*n\.pt: its architecture does not match --model"):
        pipeline.load_weights(opts, nc=2)
    opts.model = None  # the checkpoint's own architecture is fine, but the class count must match the data
    with pytest.raises(PruneOptionError, match="predicts 2 classes, the data has 6"):
        pipeline.load_weights(opts, nc=6)
    assert pipeline.load_weights(opts, nc=2).nc == 2


def test_stage_record_is_content_keyed_and_atomic(tmp_path):
    """An interrupted rerun that replaced the weights but not the json is never reused; files count by content."""
    from prune.records import StageRecord, file_digest

    model_yaml = tmp_path / "m.yaml"
    model_yaml.write_text((MODELS / "yolov5-cpu.yaml").read_text())
    rec = StageRecord("baseline", tmp_path)
    save_checkpoint(rec.ckpt, Model(str(model_yaml), nc=2), hyp={}, metrics={}, epoch=0)
    options = {"baseline": {"model": file_digest(model_yaml)}}
    rec.write(options, {"stage": "baseline"})
    assert not (tmp_path / "baseline.json.tmp").exists()
    assert rec.reusable(options) is not None
    moved = tmp_path / "moved.yaml"
    model_yaml.rename(moved)
    assert rec.reusable({"baseline": {"model": file_digest(moved)}}) is not None  # same content elsewhere
    moved.write_text(moved.read_text().replace("depth_multiple: 0.33", "depth_multiple: 0.67"))
    assert rec.reusable({"baseline": {"model": file_digest(moved)}}) is None  # edited content
    # a rerun with new options wrote new weights, then died before its json: old json, new weights
    save_checkpoint(rec.ckpt, Model(str(MODELS / "yolov5n.yaml"), nc=2), hyp={}, metrics={}, epoch=0)
    assert rec.reusable(options) is None
    rec.invalidate()
    assert rec.load() is None


def test_unprunable_model_is_refused_before_training(tiny, tmp_path, capsys, monkeypatch):
    root, data = tiny
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text((MODELS / "yolov5-cpu.yaml").read_text().replace(
        "- [-1, 1, Conv, [128, 3, 2]]      # 1", "- [-1, 1, Conv, [128, 3, 2, None, 4]]  # 1"))
    trained = []
    monkeypatch.setattr(pipeline.Pipeline, "baseline", lambda self, m: trained.append(1))
    argv = args(root, data, "--model", str(grouped), "--name", "grouped")
    assert pipeline.main(argv) == 2
    err = capsys.readouterr().err
    assert "grouped.yaml cannot be channel-pruned: model.1: grouped conv (groups=4" in err
    assert "Traceback" not in err and not trained


def test_iterative_reaches_the_one_shot_target(tiny, caplog):
    caplog.set_level(logging.INFO, logger="prune")
    """--iterative 2: prune half-way, finetune, prune to the target; ends near the one-shot channel count."""
    root, data = tiny
    common = ("--shortcuts", "0", "--unstructured", "0", "--round-to", "1", "--finetune-epochs", "2")
    assert pipeline.main(args(root, data, *common, "--name", "one")) == 0
    assert pipeline.main(args(root, data, *common, "--name", "iter", "--iterative", "2")) == 0
    assert "channel (step 1/2)" in caplog.text and "channel (step 2/2)" in caplog.text
    assert (root / "iter" / "train" / "channel_step1" / "results.csv").is_file()
    one = pd.read_csv(root / "one" / "prune_results.csv").set_index("stage")
    it = pd.read_csv(root / "iter" / "prune_results.csv").set_index("stage")
    assert it.loc["channel", "channels_kept"] == pytest.approx(one.loc["channel", "channels_kept"], rel=0.1)


def test_interleaved_timing_shuffles_which_call_follows_which():
    """Each round runs every call once, in a new order: no call always follows the same one."""
    from prune.measure import interleaved_latency

    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in "abcd"}
    ms = interleaved_latency(calls, warmup=2, runs=30)
    assert set(ms) == set("abcd") and all(0 <= v.p25 <= v.median <= v.p75 and v.runs == 30 for v in ms.values())
    rounds = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert len(rounds) == 32 and all(sorted(r) == list("abcd") for r in rounds)
    followers_of_d = {r[r.index("d") + 1] for r in rounds if r[-1] != "d"}
    assert len(followers_of_d) >= 2  # in a fixed cyclic order "d" would always be followed by "a"
    assert interleaved_latency(calls, warmup=2, runs=30) and order[:128] == order[128:]  # seeded: repeatable


def test_later_stages_close_mosaic_for_their_last_third():
    from core.train import TrainOptions
    from prune.pipeline import stage_close_mosaic

    assert stage_close_mosaic("baseline", 30) == TrainOptions.close_mosaic == 10
    assert [stage_close_mosaic("sparse", e) for e in (30, 45, 20, 10, 2, 0)] == [10, 10, 6, 3, 0, 0]
    assert stage_close_mosaic("finetune", 20) == 6 and stage_close_mosaic("channel_step1", 9) == 3


def test_pipeline_runs_with_the_anchor_free_head(tiny, tmp_path):
    """Every stage runs on the anchor-free model: its head's convs lose channels, its outputs do not, each stage's
    checkpoint rebuilds the anchor-free model, and (with onnxruntime) each stage exports and passes the check."""
    _, data = tiny
    argv = args(tmp_path, data)
    argv[argv.index(str(MODELS / "yolov5-cpu.yaml"))] = str(MODELS / "yolov5-cpu-af.yaml")
    assert pipeline.main(argv) == 0
    run = tmp_path / "run"
    df = pd.read_csv(run / "prune_results.csv")
    assert list(df["stage"]) == STAGES
    assert df.iloc[-1]["params"] < df.iloc[0]["params"]
    final = model_from_checkpoint(run / "finetune.pt")
    det = final.model[-1]
    assert is_anchor_free(final) and [b[2].out_channels for b in det.box] == [64] * 3
    head = {k: v for k, v in final.arch["channels"].items() if k.startswith("model.24.")}
    assert len(head) == 12 and min(head.values()) < 64  # every head conv named, some narrowed
    if importlib.util.find_spec("onnxruntime"):
        assert df["onnx_latency_ms"].gt(0).all()
