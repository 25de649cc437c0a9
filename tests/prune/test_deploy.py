"""bench.deploy: a checkpoint and a latency budget to the deployable table, training faked (tests.helpers) and the
search's latency faked by parameter count; the budget verdict of the table, hand-made."""
from __future__ import annotations

import json

import pytest
import torch

from bench import deploy
from core.checkpoint import model_from_checkpoint, save_checkpoint
from core.cli import EXIT_INPUT
from core.model.info import param_count
from core.model.yolo import Model
from prune import pipeline
from prune.layers import rank_shortcuts
from prune.measure import Latency
from tests.helpers import MODELS, fake_prune_fit

NAMES = ["circle", "square", "triangle", "star", "cross", "ring"]  # tiny_data's classes


def fake_ms(m: torch.nn.Module) -> float:  # 1 ms per 100k parameters: a latency with no clock involved
    return param_count(m) / 1e5


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = Model(str(MODELS / "yolov5-cpu.yaml"), nc=len(NAMES))
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.weight.data.uniform_(0.05, 1.0)  # gammas that differ: something to prune
    model.names = NAMES
    return save_checkpoint(tmp_path / "w.pt", model.eval()), fake_ms(model)


def deploy_opts(tmp_path, weights: str, **kw) -> deploy.DeployOptions:
    return deploy.DeployOptions(**{"weights": weights, "imgsz": 64, "sparse_epochs": 1, "finetune_epochs": 1,
                                   "shortcuts": 1, "tp": [], "batch_size": 8, "workers": 0, "latency_runs": 1,
                                   "final_runs": 2, "project": str(tmp_path), "name": "d", "progress": False,
                                   "record": False, **kw})


@pytest.fixture
def faked(monkeypatch, tiny_data):
    calls: list = []
    fake = fake_prune_fit(calls)

    def fit(data, model, hyp, opts, callbacks=None):  # the sparse stage's trainer needs its first gamma log row
        out = fake(data, model, hyp, opts, callbacks)
        if callbacks is not None:
            callbacks.call("on_train_start", out.model)
        return out

    monkeypatch.setattr(pipeline, "fit", fit)
    monkeypatch.setattr(pipeline, "model_latency", lambda m, *a, **k: Latency(fake_ms(m), fake_ms(m), fake_ms(m), 1))
    monkeypatch.setattr(pipeline, "paired_latency", lambda m, start, *a, **k: (
        Latency(fake_ms(m), fake_ms(m), fake_ms(m), 1), Latency(fake_ms(start), fake_ms(start), fake_ms(start), 1)))
    monkeypatch.setattr(deploy, "onnx_latency_ms", lambda m, o, path: fake_ms(m))
    monkeypatch.setattr(pipeline, "write_prune_report", lambda run_dir: None)  # plots: not under test
    torch.set_num_threads(1)
    return tiny_data, calls


def test_deploy_prunes_to_the_budget_and_distils_from_the_same_stages(tmp_path, weights, faked):
    data, calls = faked
    path, base_ms = weights
    o = deploy_opts(tmp_path, str(path), data=data, speedup=2.0, sparse_epochs=0, shortcuts="auto")  # the defaults
    report = deploy.run(o)
    assert report["target_ms"] == pytest.approx(base_ms / 2.0)
    search = json.loads((tmp_path / "d" / "plain" / "target.json").read_text())
    assert search["met"] and search["achieved"] <= report["target_ms"] * (1 + o.target_tolerance)
    assert report["shortcuts"] == search["shortcuts_chosen"] == len(search["shortcuts_tried"]) - 1
    # no sparse stage; the distilled arm trained its finetune only, the search taken from the plain arm
    assert [name for name, _ in calls] == ["finetune", "finetune"]
    assert (tmp_path / "d" / "distill" / "target.json").read_text() == (tmp_path / "d" / "plain" / "target.json").read_text()
    assert json.loads((tmp_path / "d" / "distill" / "finetune.json").read_text())["options"]["finetune"]["distill"]
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["baseline", "pruned", "distilled", "int8"]
    assert rows["pruned"]["params"] == rows["distilled"]["params"] < rows["baseline"]["params"]
    assert rows["int8"]["onnx_MB"] < rows["distilled"]["onnx_MB"]  # int8 weights
    text = deploy.table(report)
    assert "| + INT8 |" in text and "Verdict:" in text


@pytest.mark.parametrize("speedup, shortcuts", [(2.0, "auto"), (1000.0, 0)], ids=["in-reach", "out-of-reach"])
def test_deploy_refill_arm_gives_channels_back_at_the_searched_latency(tmp_path, weights, faked, monkeypatch, speedup,
                                                                      shortcuts):
    """--refill --no-distill: a second arm reuses the plain arm's stages and share, grows groups while the (faked)
    latency stays within 5% of the searched model's, and finetunes; no distillation or INT8 rows. A budget out of
    reach: the plain arm sits at its floor and the refill arm aims at the floor's own latency (no shortcut blocks
    removed there: with all of them gone each refill candidate rebuilds the model twice, and 'auto' is covered in
    reach)."""
    data, calls = faked
    path, base_ms = weights
    monkeypatch.setattr(pipeline, "latency_fits", lambda start, *a, **k: (
        lambda m: (fake_ms(m) <= fake_ms(start) * 1.05, fake_ms(m))))
    o = deploy_opts(tmp_path, str(path), data=data, speedup=speedup, sparse_epochs=0, shortcuts=shortcuts, refill=True,
                    distill=False)
    report = deploy.run(o)
    run = tmp_path / "d"
    assert [name for name, _ in calls] == ["finetune", "finetune"]  # plain, refill
    if speedup == 2.0:
        assert (run / "refill" / "target.json").read_text() == (run / "plain" / "target.json").read_text()
        searched = json.loads((run / "plain" / "target.json").read_text())  # --speedup: the pipeline's paired target
        assert searched["speedup"] == 2.0 and report["target_ms"] == pytest.approx(searched["start_ms"] / 2)
        assert not report["refill_note"]
    else:
        floor = fake_ms(model_from_checkpoint(run / "plain" / "layer.pt"))
        aimed = json.loads((run / "refill" / "target.json").read_text())["target"]["value"]
        assert aimed == pytest.approx(floor) and "aimed at the floor's own" in report["refill_note"]
    filled = json.loads((run / "refill" / "refill.json").read_text())
    assert filled["channels_added"] > 0 and report["refill"]["grow"] == filled["grow"]
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["baseline", "pruned", "refilled"]
    assert rows["pruned"]["params"] < rows["refilled"]["params"]
    start = model_from_checkpoint(run / "plain" / "layer.pt")
    assert fake_ms(model_from_checkpoint(run / "refill" / "layer.pt")) <= fake_ms(start) * 1.05
    text = deploy.table(report)
    assert f"refill: +{filled['channels_added']} channels" in text and "| pruned + refill |" in text
    assert "INT8" not in text


@pytest.mark.parametrize("layers", [{}, {"sparse_epochs": 0, "shortcuts": "auto"}], ids=["sparse+1", "defaults"])
def test_an_unreachable_budget_prunes_at_the_largest_share_and_says_so(tmp_path, weights, faked, layers):
    """With a sparse stage and one block, or (the defaults) no sparse stage and `auto` blocks: all of them go."""
    data, _ = faked
    path, base_ms = weights
    popts = deploy.prune_options(deploy_opts(tmp_path, str(path), data=data, target_latency_ms=base_ms / 1000, **layers),
                                 tmp_path)
    popts.onnx_latency = False  # the stages' own latency table is not what this test is about
    assert popts.sr == (layers.get("sparse_epochs", 1) > 0)
    rows, note, closest = deploy.run_arm(popts)
    assert note.startswith("target out of reach") and "the largest share" in note
    assert popts.global_percent > 0.9 and popts.target_latency_ms == 0
    assert rows["finetune"]["channels_kept"] < rows["baseline"]["channels_kept"] / 2
    removed = json.loads((tmp_path / "plain" / "layer.json").read_text())["extra"]["removed"]
    assert len(removed) == (1 if layers.get("shortcuts", 1) == 1 else len(rank_shortcuts(model_from_checkpoint(path))))
    assert closest == pytest.approx(fake_ms(model_from_checkpoint(tmp_path / "plain" / "layer.pt")))  # what it measured


def row(model: str, mAP: float, speedup: float) -> dict:
    return {"model": model, "mAP50-95": mAP, "mAP50": mAP, "params": 1000, "epochs": 20, "ms": 3.0 / speedup,
            "p25_ms": 3.0 / speedup, "p75_ms": 3.0 / speedup, "speedup": speedup, "onnx_MB": 1.0}


def report(rows: list[dict], note: str = "") -> dict:
    return {"meta": {"options": {**vars(deploy.DeployOptions()), "target_latency_ms": 0.0}}, "rows": rows,
            "target_ms": 1.0, "baseline_search_ms": 3.0, "tp_target_ms": 1.0, "share": 0.7, "search": {}, "plain_note": note, "tp_notes": {},
            "seconds": {"total": 1.0}}


def test_the_verdict_needs_both_the_speedup_and_the_accuracy():
    base = row("baseline", 0.200, 1.0)
    met = deploy.table(report([base, row("pruned", 0.195, 3.2), row("distilled", 0.185, 3.3),
                               row("int8", 0.192, 2.9), row("tp_l1", 0.150, 3.1)]))
    lines = {line.split(" |")[0]: line for line in met.splitlines() if line.startswith("|")}
    assert lines["| pruned to target"].endswith("| yes |")
    assert lines["| + distillation"].endswith("| no |")  # 3.3x, but 0.015 below the baseline
    assert lines["| + INT8"].endswith("| no |")  # within 0.01, but 2.9x
    assert "Verdict: met — pruned to target: 3.20x, mAP50-95 0.1950 (-0.0050)" in met
    assert "ours ahead by +0.0450" in met
    missed = deploy.table(report([base, row("pruned", 0.150, 3.2), row("distilled", 0.195, 2.5),
                                  row("int8", 0.150, 3.4)], note="target out of reach: X"))
    assert "Verdict: NOT met — + INT8: 3.40x" in missed  # none meets: the fastest is named
    assert "Note: target out of reach: X" in missed


def test_reach_times_the_pruned_model_down_to_the_largest_share(tmp_path, weights):
    path, _ = weights
    rows = deploy.reach(str(path), 64, shares=[0.5], shortcuts=[0, 1], runs=1, out_dir=tmp_path)
    assert [(r["share"] > 0.99, r["shortcuts"]) for r in rows[1:]] == [(False, 0), (True, 0), (False, 1), (True, 1)]
    assert rows[0]["speedup"] == 1.0 and min(rows, key=lambda r: r["GFLOPs"]) is rows[-1]  # the most pruned
    assert "Fastest: share" in deploy.reach_table(rows, 64, "w.pt", 1)


def test_torch_pruning_is_compared_with_our_best_model_at_least_as_fast():
    """Ours at 1.26x (0.30) and 1.30x (0.22): Torch-Pruning at 1.19x (0.27) is behind the 1.26x model; at 1.11x
    (0.29) too; at 1.40x nothing of ours is as fast, and the line says so."""
    ours = [row("pruned", 0.30, 1.26), row("distilled", 0.22, 1.30)]
    assert "ours ahead by +0.0300 at 1.26x (pruned to target" in deploy.versus_tp(ours, row("tp_l1", 0.27, 1.19))
    assert "ours ahead by +0.0100 at 1.26x" in deploy.versus_tp(ours, row("tp_bn", 0.29, 1.11))
    assert "ours NOT ahead by -0.0600 at 1.26x" in deploy.versus_tp(ours, row("tp_bn", 0.36, 1.20))
    line = deploy.versus_tp(ours, row("tp_l1", 0.31, 1.40))
    assert "faster than every model of ours (our fastest + distillation 1.30x, 0.2200) and more accurate" in line


def test_report_only_renders_a_run_again(tmp_path, capsys):
    rep = report([row("baseline", 0.2, 1.0), row("pruned", 0.21, 1.6), row("distilled", 0.2, 1.6), row("int8", 0.2, 1.2),
                  row("tp_l1", 0.22, 1.5)])
    rep["meta"]["date"] = "2026-12-07T13:40"
    (tmp_path / "deploy.json").write_text(json.dumps(rep))
    assert deploy.main(["--report-only", str(tmp_path), "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "| pruned to target | 0.2100 |" in out and "ours NOT ahead by -0.0100 at 1.60x" in out


def seeded_report(seed: int, pruned: float, tp: float, tp_speedup: float = 1.5) -> dict:
    rep = report([row("baseline", 0.2, 1.0), row("pruned", pruned, 1.6), row("tp_l1", tp, tp_speedup)])
    rep["meta"]["options"]["seed"] = seed
    return rep


def test_seeded_table_pairs_ours_with_torch_pruning_by_seed(tmp_path, capsys):
    """Differences +0.01, +0.02, +0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 3.464 with 2 df,
    two-sided p = 0.0742 (t tables: t_0.975,2 = 4.303 > 3.464 > t_0.95,2 = 2.920, so 0.05 < p < 0.10)."""
    folders = []
    for seed, (ours, tp) in enumerate([(0.21, 0.20), (0.23, 0.21), (0.25, 0.22)]):
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        (folder / "deploy.json").write_text(json.dumps(seeded_report(seed, ours, tp, tp_speedup=1.7 if seed else 1.5)))
        folders.append(str(folder))
    assert deploy.main(["--seeded", *folders, "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "| pruned to target | 0.2300 ± 0.0200 | 0.2100 / 0.2300 / 0.2500 | 1.60x ± 0.00 |" in out
    assert "| pruned to target - Torch-Pruning L1 | 3 | +0.0200 ± 0.0100 | 3.46 | 0.074 | no | 1/3 |" in out


def test_seeded_table_pairs_the_refill_with_torch_pruning_and_with_the_plain_arm():
    reps = []
    for seed, (pruned, refilled, tp) in enumerate([(0.20, 0.22, 0.21), (0.21, 0.24, 0.22), (0.22, 0.26, 0.23)]):
        rep = report([row("baseline", 0.2, 1.0), row("pruned", pruned, 1.6), row("refilled", refilled, 1.55),
                      row("tp_l1", tp, 1.5)])
        rep["meta"]["options"].update(seed=seed, refill=True)
        reps.append(rep)
    text = deploy.seeded_table(reps, ["s0", "s1", "s2"])
    assert "| pruned + refill - Torch-Pruning L1 | 3 | +0.0200 ± 0.0100 | 3.46 | 0.074 | no | 3/3 |" in text
    assert "| pruned + refill - pruned to target | 3 | +0.0300 ± 0.0100 | 5.20 | 0.035 | yes | 0/3 |" in text
    old = seeded_report(0, 0.2, 0.2)  # a run from before the refill and distill options: their defaults
    new = seeded_report(1, 0.2, 0.2)
    new["meta"]["options"].update(refill=False, distill=True)
    assert "pruned to target - Torch-Pruning L1" in deploy.seeded_table([old, new], ["s0", "s1"])


def test_seeded_table_refuses_runs_that_differ_in_more_than_the_seed(tmp_path, capsys):
    a, b = seeded_report(0, 0.2, 0.2), seeded_report(1, 0.2, 0.2)
    b["meta"]["options"]["speedup"] = 2.0
    with pytest.raises(deploy.DeployError, match=r"s1 differs from s0 in speedup \(2.0 vs 3.0\)"):
        deploy.seeded_table([a, b], ["s0", "s1"])
    with pytest.raises(deploy.DeployError, match=r"seeds \[0, 0\] repeat"):
        deploy.seeded_table([a, seeded_report(0, 0.2, 0.2)], ["s0", "s0b"])
    assert deploy.main(["--seeded", str(tmp_path), str(tmp_path / "x"), "--no-record"]) == EXIT_INPUT
    assert f"bench.deploy: error: --seeded: no deploy.json in {tmp_path}, {tmp_path / 'x'}" in capsys.readouterr().err


def test_torch_pruning_is_aimed_at_our_latency_and_with_a_bracket_also_a_little_slower():
    o = deploy.DeployOptions(tp=["tp_bn", "tp_l1"], tp_bracket=0.05)
    assert deploy.tp_targets(o) == [("tp_bn", "tp_bn", 1.0), ("tp_l1", "tp_l1", 1.0), ("tp_bn_slow", "tp_bn", 1.05),
                                    ("tp_l1_slow", "tp_l1", 1.05)]
    assert deploy.tp_targets(deploy.DeployOptions(tp=["tp_l1"], tp_bracket=0.0)) == [("tp_l1", "tp_l1", 1.0)]


def test_a_candidate_is_timed_beside_ours_and_costed_as_a_multiple_of_ours(tmp_path, monkeypatch):
    """The paired cost: one interleaved loop of the reference files and the candidate; candidate / ours."""
    loops = []

    def fake_loop(models, imgsz, threads, runs, onnx):
        loops.append(sorted(onnx))
        ms = {"ours": 2.0, "baseline": 3.0, "candidate": 2.2}
        return {k: Latency(ms[k], ms[k], ms[k], runs) for k in onnx}

    monkeypatch.setattr(deploy, "cpu_latency", fake_loop)
    monkeypatch.setattr(deploy, "export_onnx", lambda m, path, imgsz: path)
    cost = deploy.latency_vs_ours(deploy.DeployOptions(), {"ours": tmp_path / "o.onnx", "baseline": tmp_path / "b.onnx"},
                                 tmp_path / "c.onnx")
    assert cost(torch.nn.Identity()) == pytest.approx(1.1, rel=1e-12)
    assert loops == [["baseline", "candidate", "ours"]]


def test_torch_pruning_is_read_at_our_latency_between_its_two_rows():
    """Ours at 3.0 / 1.25 = 2.4 ms. L1's rows at 3.0 / 1.5 = 2.0 ms (0.25) and 3.0 / 1.2 = 2.5 ms (0.30): ours sits
    0.4 / 0.5 = 0.8 of the way, so L1 at our latency reads 0.25 + 0.8 x 0.05 = 0.29. BN-scale's rows are both
    slower (2.5 and 3.0 ms): the faster one's 0.27 is an upper bound. Both faster: nothing."""
    ours = row("pruned", 0.31, 1.25)
    rows = [row("baseline", 0.2, 1.0), ours, row("tp_l1", 0.25, 1.5), row("tp_l1_slow", 0.30, 1.2),
            row("tp_bn", 0.27, 1.2), row("tp_bn_slow", 0.28, 1.0)]
    read = deploy.tp_at_our_latency(rows, "pruned")
    assert read["tp_l1"]["how"] == "interpolated" and read["tp_l1"]["mAP50-95"] == pytest.approx(0.29, abs=1e-12)
    assert read["tp_bn"] == {"mAP50-95": 0.27, "how": "upper bound", "ms": (2.5, 3.0)}
    faster = [row("baseline", 0.2, 1.0), ours, row("tp_l1", 0.25, 1.5), row("tp_l1_slow", 0.30, 1.3)]
    assert deploy.tp_at_our_latency(faster, "pruned") == {}
    text = deploy.table(report(rows))
    assert "Torch-Pruning L1 at the latency of pruned to target (1.25x; interpolated from its rows at 2.000 and " \
           "2.500 ms): 0.2900; ours ahead by +0.0200" in text
    assert "Torch-Pruning BN-scale at the latency of pruned to target (1.25x; upper bound" in text
    assert "ours ahead by +0.0300 at 1.25x (pruned to target" in text  # the slower BN row (0.28 at 1.0x) against ours
    assert "Torch-Pruning L1 at the latency of pruned to target: not bracketed" in deploy.table(report(faster))


def test_seeded_table_pairs_ours_with_torch_pruning_read_at_our_latency():
    """L1 read at ours: seed 0 interpolated 0.29 (as above), seeds 1-2 the upper bound (both rows slower) 0.28 and
    0.27; ours 0.31, 0.31, 0.30: differences +0.02, +0.03, +0.03, mean 0.02667, sd 0.00577, t = 8.00 with 2 df,
    two-sided p = 0.0153 (t_0.99,2 = 6.965 < 8.00 < t_0.995,2 = 9.925: 0.01 < p < 0.02)."""
    reps = []
    for seed, (mine, l1, l1_speed) in enumerate([(0.31, 0.25, 1.5), (0.31, 0.28, 1.2), (0.30, 0.27, 1.2)]):
        rep = report([row("baseline", 0.2, 1.0), row("pruned", mine, 1.25), row("tp_l1", l1, l1_speed),
                      row("tp_l1_slow", 0.30 if seed == 0 else l1 + 0.01, 1.2 if seed == 0 else 1.1)])
        rep["meta"]["options"]["seed"] = seed
        reps.append(rep)
    text = deploy.seeded_table(reps, ["s0", "s1", "s2"])
    assert ("| pruned to target - Torch-Pruning L1 at our latency | 3 | +0.0267 ± 0.0058 | 8.00 | 0.015 | yes | "
            "equal (read at ours; 3/3 seeds bracketed or bounded, 2 by the upper bound) |") in text
    old = seeded_report(0, 0.2, 0.2)  # a run from before the bracket ran without it: not refused beside one with 0
    del old["meta"]["options"]["tp_bracket"]
    new = seeded_report(1, 0.2, 0.2)
    new["meta"]["options"]["tp_bracket"] = 0.0
    assert "at our latency" not in deploy.seeded_table([old, new], ["s0", "s1"])
