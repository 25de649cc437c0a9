"""bench.record: dated sections appended (never overwritten) with the machine named; every bench's table is
markdown; the run-folder commands (prune, study, train tables) read what the pipelines write."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

from bench import record as rec
from bench.record import machine, markdown_table, record

META = {"date": "2026-12-07T10:20:30", "cpu": "Test CPU 9000", "cpus": 2, "simd": "avx2 avx512f",
        "torch": "2.13.0+cpu", "commit": "abc1234"}


def markdown_blocks(text: str) -> list[list[list[str]]]:
    """The tables in `text` (runs of lines starting with '|'), each a list of rows of stripped cells."""
    blocks, run = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            run.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif run:
            blocks.append(run)
            run = []
    return blocks


def assert_markdown(text: str, tables: int = 1) -> None:
    """At least `tables` tables, each with a separator row and the header's cell count in every row."""
    blocks = markdown_blocks(text)
    assert len(blocks) >= tables, text
    for b in blocks:
        assert len(b) >= 2 and all(set(c) <= set("-:") and c for c in b[1]), b
        assert all(len(row) == len(b[0]) for row in b), b


def test_record_appends_a_dated_section_naming_the_machine(tmp_path):
    out = record("thing", "| a | b |\n|---|---|\n| 1 | 2 |", META, command="python -m bench.thing --x 1",
                 results=tmp_path)
    assert out == tmp_path / "thing.md"
    text = out.read_text()
    assert text.startswith("# thing\n")
    assert "\n## 2026-12-07 10:20 · Test CPU 9000, 2 cores, avx2 avx512f, torch 2.13.0+cpu\n" in text
    assert "`python -m bench.thing --x 1` at abc1234" in text and text.rstrip().endswith("| 1 | 2 |")


def test_record_never_overwrites_earlier_sections(tmp_path):
    (tmp_path / "thing.md").write_text("# thing\n\nhand-written header\n\n## 2026-11-21 · old host\n\nold table\n")
    record("thing", "first table", META, results=tmp_path)
    record("thing", "second table", {**META, "date": "2026-12-08T09:00:00", "cpu": "Other CPU"}, results=tmp_path)
    text = (tmp_path / "thing.md").read_text()
    assert text.startswith("# thing\n\nhand-written header\n\n## 2026-11-21 · old host\n\nold table\n")
    assert text.index("old table") < text.index("first table") < text.index("## 2026-12-08 09:00 · Other CPU")
    assert text.index("## 2026-12-08") < text.index("second table") and text.count("## ") == 3


def test_record_defaults_to_the_results_folder_and_this_machine(results_in_tmp):
    out = record("thing", "| x |\n|---|\n| 1 |")  # RESULTS points at tmp in these tests (conftest)
    text = out.read_text()
    assert out.parent == results_in_tmp
    m = machine()
    assert m["cpu"] in text and f"torch {torch.__version__}" in text and m["date"][:10] in text
    assert not (results_in_tmp / "headline.json").exists()


def test_record_files_headline_figures_beside_the_results(tmp_path, monkeypatch):
    monkeypatch.setattr(rec.headline_file, "write_readme", lambda *a, **k: pytest.fail("README rewritten"))
    record("thing", "t", META, command="python -m bench.thing", results=tmp_path, headline={"speed": "1.91x"})
    record("thing", "t", {**META, "date": "2026-12-09T00:00:00"}, results=tmp_path, headline={"mAP": "0.25"})
    data = json.loads((tmp_path / "headline.json").read_text())
    assert data["thing"]["speed"] == {"figure": "1.91x", "date": "2026-12-07", "command": "python -m bench.thing",
                                      "machine": "Test CPU 9000, 2 cores, avx2 avx512f, torch 2.13.0+cpu"}
    assert data["thing"]["mAP"]["date"] == "2026-12-09"  # a label the second run did not produce is kept


def test_recording_into_the_committed_folder_rewrites_the_readme_table(tmp_path, monkeypatch):
    committed, readme = tmp_path / "results", tmp_path / "README.md"
    monkeypatch.setattr(rec.headline_file, "HEADLINE_JSON", committed / "headline.json")
    monkeypatch.setattr(rec.headline_file, "README", readme)
    readme.write_text(f"# r\n{rec.headline_file.START}\n{rec.headline_file.END}\n")
    record("thing", "t", META, results=committed, headline={"speed": "1.91x"})
    assert "| speed | 1.91x | 2026-12-07, Test CPU 9000, 2 cores" in readme.read_text()
    readme.write_text("# a README without the markers\n")  # logged, not raised: the results are kept
    record("thing", "t2", META, results=committed, headline={"speed": "2.00x"})
    assert "t2" in (committed / "thing.md").read_text() and "2.00x" in (committed / "headline.json").read_text()


def test_machine_names_cpu_torch_and_date():
    m = machine()
    assert m["cpu"] and m["torch"] == torch.__version__ and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", m["date"])
    assert rec.machine_line(m).endswith(f"torch {torch.__version__}")


def test_markdown_table_and_command_line():
    assert markdown_table(["a", "b"], [(1, "x"), (2.5, "y")]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |"
    assert rec.command_line("bench.engine", ["--batches", "20", "a b"]) == "python -m bench.engine --batches 20 'a b'"


# --- every bench's printed table is markdown -------------------------------------------------------------

def test_engine_table_is_markdown():
    from bench.engine import table

    text = table({"model": "m.yaml", "train_images_per_s": 71.234, "params": 1000})
    assert_markdown(text)
    assert "| train_images_per_s | 71.23 |" in text


def test_speed_ab_table_is_markdown():
    from bench.speed_ab import table

    ab = {"a_ms": 10.0, "b_ms": 8.0, "ratio": 1.25}
    r = {"model": "m.yaml", "imgsz": 160, "batch": 16, "cpu_capability": "AVX2", "train channels_last": ab,
         "SPPF pools": ab, "bf16 in hardware": "no", "max_abs_diff channels_last vs NCHW (inference)": 1e-5,
         "SPPF pools bit-identical": True,
         "fit channels_last": {k: {"a_s": 5.0, "b_s": 4.0, "ratio": 1.25} for k in ("train", "val")}}
    text = table(r, 20)
    assert_markdown(text)
    assert "| train channels_last | 10.0 | 8.0 | 1.25 |" in text and "| fit val epoch (s) | 5.0 | 4.0 | 1.25 |" in text


def test_evolve_speed_table_is_markdown():
    from bench.evolve_speed import table

    w = {"trials_per_hour": 160.0, "overhead_fraction": 0.02, "mean_overhead_s": 0.5, "mean_trial_s": 20.0}
    res = {"study": "s.yaml", "epochs": 5, "imgsz": 128, "trials": 8, "search_trials": 16, "workers_1": w,
           "workers_2": {**w, "trials_per_hour": 300.0}, "scaling_2_vs_1": 1.875, "best_fitness_ga": 0.2,
           "best_fitness_tpe": 0.19}
    text = table(res)
    assert_markdown(text)
    assert "| scaling 2 vs 1 (target >= 1.8) | 1.88x |" in text and "0.2000 / 0.1900" in text


def _search_result() -> dict:
    def sampler(gain, met):
        return {"best_fitness": 0.23, "best_trial": 10, "evolve_s": 390.0, "target_met": met,
                "retrain": {"mean": 0.232, "sd": 0.0076}, "paired": {"diff_mean": gain, "diff_se": 0.0041}}
    return {"study": "q.yaml", "trials": 16, "seeds": 3, "retrain_value": "objective (mean_last_3)", "wall_s": 1517.0,
            "base": {"mean": 0.2328, "sd": 0.0018},
            "samplers": {"ga": sampler(-0.0008, False), "tpe": sampler(0.03, True)}}


def test_search_table_and_headline():
    from bench.search import HEADLINE, headline, table

    text = table(_search_result())
    assert_markdown(text)
    assert "| base hyp | - | 0.2328 ± 0.0018 | - | - | - |" in text and "| -0.0008 ± 0.0041 | not met |" in text
    assert headline(_search_result()) == {
        HEADLINE: "ga -0.0008 ± 0.0041, tpe +0.0300 ± 0.0041 (target +0.02: met); base hyp 0.2328 ± 0.0018"}


def test_objective_stability_records_unless_told_not_to(tmp_path, results_in_tmp):
    from bench.objective_stability import main

    for hyp, shift in (("a", 0.0), ("b", 0.1)):
        for seed in (0, 1):
            run = tmp_path / "runs" / f"{hyp}_s{seed}"
            run.mkdir(parents=True)
            fit = [0.1 + shift + 0.01 * e + 0.001 * seed for e in range(4)]
            pd.DataFrame({"epoch": range(4), "fitness": fit, "mAP50-95": fit}).to_csv(run / "results.csv", index=False)
    assert main([str(tmp_path / "runs"), "--no-record"]) == 0
    assert not results_in_tmp.exists()
    assert main([str(tmp_path / "runs")]) == 0
    text = (results_in_tmp / "objective_stability.md").read_text()
    assert_markdown(text)
    assert "| mean_last_3 | 1.000 |" in text and "python -m bench.objective_stability" in text


def test_peers_report_is_markdown_and_headline_needs_the_whole_suite():
    from bench.heldout import SETS
    from bench.peers import ACCURACY, SPEED, headline, report

    rows = [{"set": "glyphs", "trainer": t, "run": "quick", "epochs": 3, "rc": 0, "wall_s": w, "train_images_per_s": i,
             "peak_rss_mb": 1000.0, "peak_pss_mb": 800.0, "processes": 3, "train_gflop_per_s": 50.0}
            for t, w, i in (("ours", 29.1, 103.0), ("yolov5n", 55.5, 53.9))]
    full = [{"set": s, "trainer": t, "run": "full", "epochs": 30, "rc": 0, "mAP50-95_last": m, "mAP50-95_best": m}
            for s in SETS for t, m in (("ours", 0.5), ("yolov5n", 0.4))]
    assert_markdown(report(rows + full, {"conv_gflop_per_s": 277.4}), tables=2)
    speed = SPEED.format(set="glyphs", epochs=3)
    assert headline(rows) == {speed: "1.91x (wall 0.52)"}
    assert headline(rows + full[:-1]) == {speed: "1.91x (wall 0.52)"}  # one set short: no suite row
    assert headline(rows + full)[ACCURACY.format(epochs=30, peer="yolov5n")] == \
        ", ".join(f"{s} 1.25" for s in SETS) + " (one seed each)"  # every set of the suite, in its order


def test_torch_pruning_headline_names_the_three_finetuned_models():
    from bench.torch_pruning import HEADLINE, headline

    rows = [{"model": m, "mAP50-95": v, "GFLOPs": g} for m, v, g in
            (("baseline", 0.2272, 1.185), ("ours_ft", 0.2469, 0.817), ("tp_bn_ft", 0.2115, 0.81),
             ("tp_l1_ft", 0.2146, 0.806))]
    report = {"rows": rows, "meta": {"options": {"finetune_epochs": 10}}}
    assert headline(report) == {HEADLINE: "0.2469 / 0.2115 / 0.2146 (GFLOPs -31%, 10 finetune epochs)"}
    assert headline({**report, "rows": rows[:2]}) == {}


def test_use_headline_reads_the_val_and_latency_phases():
    from bench.use import EXPORT, LATENCY, headline

    m = {"mAP50-95": 0.0284}
    r = {"meta": {"options": {"imgsz": 160}}, "val pt vs onnx": {"pt": m, "onnx": m, "onnx fp16": m},
         "latency": {"160": {"pytorch": 6.3, "onnxruntime": 1.8, "onnxruntime fp16": 1.8},
                     "640": {"pytorch": 34.1, "onnxruntime": 20.8}}}
    assert headline(r) == {EXPORT.format(imgsz=160): "0.0284 / 0.0284 / 0.0284",
                           LATENCY: "160 px: 6.3 -> 1.8 ms (3.5x); 640 px: 34.1 -> 20.8 ms (1.6x)"}
    assert headline({**r, "val pt vs onnx": {"pt": m}, "latency": {"160": {"pytorch": 6.3}}}) == {}


# --- the run-folder commands -------------------------------------------------------------------------------

def test_prune_table_reads_the_pipelines_csv(tmp_path, results_in_tmp):
    from bench.prune_table import HEADLINE, main

    run = tmp_path / "shapes"
    run.mkdir()
    pd.DataFrame([
        {"stage": "baseline", "mAP50": 0.3328, "mAP50-95": 0.1933, "params": 449587, "GFLOPs": 0.07407,
         "latency_ms": 20.32, "onnx_latency_ms": 15.24, "imgsz": 160, "latency_imgsz": 640, "threads": 1},
        {"stage": "finetune", "mAP50": 0.4533, "mAP50-95": 0.2786, "params": 124643, "GFLOPs": 0.04442,
         "latency_ms": 14.92, "onnx_latency_ms": float("nan"), "imgsz": 160, "latency_imgsz": 640, "threads": 1},
    ]).to_csv(run / "prune_results.csv", index=False)
    (run / "finetune.json").write_text(json.dumps({"options": {
        "baseline": {"epochs": 30, "optimizer": "auto"}, "sparse": {"sr": False, "s": 1e-3},
        "channel": {"global_percent": 0.65, "round_to": 16}, "finetune": {"finetune_epochs": 20}}}))
    assert main([str(run), "--headline"]) == 0
    text = (results_in_tmp / "prune.md").read_text()
    assert_markdown(text)
    assert "|  | Before | After finetune |" in text and "| params | 449,587 | 124,643 |" in text
    assert "| onnx_latency_ms | 15.24 | - |" in text and "sparse (" not in text
    assert "baseline (epochs 30, optimizer auto); channel (global_percent 0.65, round_to 16)" in text
    figure = json.loads((results_in_tmp / "headline.json").read_text())["prune"][HEADLINE]["figure"]
    assert figure == "GFLOPs -40.0%, mAP50-95 0.1933 -> 0.2786, latency 1.36x (0.82 of the FLOPs ratio)"
    assert main([str(tmp_path / "nothing")]) == 2


def test_study_table_reads_the_summary(tmp_path, results_in_tmp):
    from bench.study_table import HEADLINE, main

    run = tmp_path / "quick"
    run.mkdir()
    base = {"trial": 0, "role": "base", "seeds": [1, 2, 3], "fitness": [0.2331, 0.2309, 0.2344], "mean": 0.2328,
            "sd": 0.0018, "n": 3}
    summary = {"study": "quick", "updated": "2026-12-04", "base_run": {"fitness": 0.243, "mAP50-95": 0.227,
                                                                         "best_epoch": 28, "seconds": 268.0},
               "noise": {"mean": 0.2320, "sd": 0.0048, "n": 3, "trials": [0, 1, 2], "seeds": [0, 101, 102]},
               "evolution": {"complete": 12, "pruned": 0, "failed": 0,
                             "best_searched_trial": {"number": 10, "fitness": 0.2314, "gain_sd": -0.1, "base": False}},
               "retrain": {"candidates": [base, {**base, "trial": 10, "role": "top",
                                                 "paired_vs_base": {"diff_mean": -0.002, "diff_se": 0.0061}}],
                           "verdict": "the base hyp has the highest retrain mean"},
               "prune": None, "seconds": {"evolve": 273.0, "retrain": 137.0}}
    (run / "summary.json").write_text(json.dumps(summary))
    assert main([str(run), "--headline", "--no-record"]) == 0 and not results_in_tmp.exists()
    assert main([str(run), "--headline"]) == 0
    text = (results_in_tmp / "study.md").read_text()
    assert_markdown(text)
    assert "| noise floor: base hyp over seeds 0, 101, 102 (trials 0, 1, 2) | fitness 0.2320 ± 0.0048 (sd) |" in text
    assert "0.2331 / 0.2309 / 0.2344 = 0.2328 ± 0.0018; paired gain -0.0020 ± 0.0061 (se)" in text
    assert json.loads((results_in_tmp / "headline.json").read_text())["study"][HEADLINE]["figure"] == \
        "0.2320 ± 0.0048 (sd, 3 seeds)"


def test_train_table_reads_results_csv(tmp_path, results_in_tmp):
    from bench.train_table import main
    from core.run_dir import write_results

    run = tmp_path / "exp"
    run.mkdir()
    write_results(run / "results.csv", [
        {"epoch": e, "train_box": 0.1, "train_cls": 0.05, "P": 0.5, "R": 0.2, "mAP50": 0.1 * e, "mAP50-95": m,
         "seconds": 7.0} for e, m in enumerate((0.0, 0.192, 0.1864))])
    (run / "opt.yaml").write_text("epochs: 3\nimgsz: 160\nbatch_size: 16\noptimizer: auto\n")
    assert main([str(run)]) == 0
    text = (results_in_tmp / "train.md").read_text()
    assert_markdown(text)
    assert "epochs 3, imgsz 160, batch_size 16, optimizer auto" in text
    assert "| 1 | 0.1000 | 0.0500 | 0.500 | 0.200 | 0.1000 | 0.1920 | 7.0 |" in text
    assert "best mAP50-95 0.1920 at epoch 1; 21 s of epochs in all" in text
