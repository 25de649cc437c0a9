"""Peer benchmark helpers (memory sampling, the report) and the A/B timer, at tiny scale (the training profile:
test_train_profile.py)."""
import os
import subprocess
import sys
import time

import torch

from bench.peers import PeakMemory, report, tree_memory


def test_tree_memory_counts_children():
    rss0, pss0, n0 = tree_memory(os.getpid())
    assert rss0 > 10 and 0 < pss0 <= rss0 + 1 and n0 >= 1
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(200 << 20); time.sleep(3)"])
    try:
        mem = PeakMemory(os.getpid(), interval=0.05)
        mem.start()
        time.sleep(1.5)
        mem.stop()
    finally:
        child.kill()
        child.wait()
    assert mem.procs >= 2
    assert mem.rss >= rss0 + 150  # the child's 200 MB are in the tree's sum


def test_report_prints_ratios_against_each_peer():
    meta = {"date": "d", "cpu": "c", "conv_gflop_per_s": 100.0, "imgsz": 160, "batch": 16, "workers": 2}
    row = dict(set="glyphs", rc=0, processes=1, peak_pss_mb=500.0, train_gflop_per_s=10.0)
    rows = [{**row, "trainer": "ours", "run": "quick", "wall_s": 50.0, "train_images_per_s": 30.0, "peak_rss_mb": 800.0},
            {**row, "trainer": "yolov5n", "run": "quick", "wall_s": 100.0, "train_images_per_s": 20.0, "peak_rss_mb": 1000.0},
            {**row, "trainer": "ours", "run": "full", "epochs": 30, "mAP50-95_last": 0.2, "mAP50-95_best": 0.25},
            {**row, "trainer": "yolov5n", "run": "full", "epochs": 30, "mAP50-95_last": 0.4, "mAP50-95_best": 0.4}]
    text = report(rows, meta)
    assert "ours/yolov5n: wall 0.50" in text and "img/s 1.50" in text and "RSS 0.80" in text
    assert "mAP50-95 last 0.50 best 0.62" in text
    last = [c.strip() for c in text.splitlines()[-1].strip("|").split("|")]
    assert last == ["glyphs", "0.2000", "0.4000", "0.50"]


def test_speed_ab_interleaves_and_ratios():
    from bench.speed_ab import interleave

    calls = []

    def a():
        calls.append("a")
        time.sleep(0.006)

    def b():
        calls.append("b")
        time.sleep(0.001)

    r = interleave(a, b, steps=4, warmup=1)
    assert calls == ["a", "b"] * 5  # alternating, warm-up steps included
    assert r["steps"] == 4 and r["a_ms"] >= 6 and r["b_ms"] >= 1 and r["ratio"] == r["a_ms"] / r["b_ms"] > 1.5


def test_peer_bench_passes_our_extra_flags_only_to_ours(tmp_path):
    from pathlib import Path

    from bench.peers import RunSpec, command

    def argv(trainer):
        return command(RunSpec("glyphs", trainer, 3, Path("d.yaml"), 160, 16, 2, tmp_path / trainer,
                               ("--bf16", "on")), "peer-python")[0]
    ours, peer = argv("ours"), argv("yolov5n")
    assert ours[-2:] == ["--bf16", "on"] and "core.train" in ours
    assert "--bf16" not in peer and "model=yolov5n.yaml" in peer


def test_training_ceiling_counts_the_model_convs_flops():
    from torch import nn

    from bench.engine import model_convs, training_ceiling
    from core.model.yolo import Model

    model = Model("studies/models/yolov5n.yaml", nc=10)
    x = torch.zeros(2, 3, 64, 64)
    convs = model_convs(model, x)
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert convs[0][1] == (2, 3, 64, 64)  # the stem sees the image
    f = training_ceiling("studies/models/yolov5n.yaml", 64, 2, seconds=0.02)
    # our per-conv count and thop's whole-model count agree: convs are nearly all of a YOLO's FLOPs
    assert 0.9 < f["ceiling_convs_share_of_model_flops"] <= 1.0
    assert f["ceiling_convs_gflop_per_s"] > 0 and f["ceiling_eager_gflop_per_s"] > 0


def test_report_header_shows_the_models_compute_ceiling():
    meta = {"conv_gflop_per_s": 200.0, "ceiling_gflop_per_s": 70.0, "imgsz": 160}
    assert "no data, loss or optimizer: 70.0, 0.35 of peak" in report([], meta)
