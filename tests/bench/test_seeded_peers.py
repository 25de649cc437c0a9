"""bench.seeded_peers: its statistics on hand-made numbers, the cls-loss rule, arms, and the commands it runs."""
import math
from pathlib import Path

import pytest

from bench.peers import RunSpec, command
from bench.seeded_peers import paired_t, parse_arm, plot, report, third_fall


def test_paired_t_on_hand_made_numbers():
    # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 3.4641, 2 df -> p = 0.0742
    t = paired_t([0.11, 0.22, 0.33], [0.10, 0.20, 0.30])
    assert t["n"] == 3 and t["mean"] == pytest.approx(0.02) and t["sd"] == pytest.approx(0.01)
    assert t["t"] == pytest.approx(3.4641, abs=1e-4) and t["p"] == pytest.approx(0.0742, abs=1e-4)
    same = paired_t([0.75, 0.5], [0.25, 0.0])  # equal differences: no spread, the sign is certain
    assert same["t"] == math.inf and same["p"] == 0.0
    assert math.isnan(paired_t([0.5], [0.4])["p"])  # one seed: no spread, no test
    with pytest.raises(ValueError):
        paired_t([0.1, 0.2], [0.1])


def test_third_fall_reads_the_end_of_the_first_third():
    flat = [1.0] * 29 + [0.95]
    assert not third_fall(flat)["falls"]
    learns = [1.0, 0.8, 0.6, 0.5] + [0.45] * 5 + [0.3] * 21  # epoch 10 (ceil 30/3) holds 0.3
    x = third_fall(learns)
    assert x["falls"] and x["third"] == 0.3 and x["share"] == pytest.approx(1.0)
    late = [1.0] * 10 + [0.5] * 20  # falls at epoch 11: one epoch too late
    assert not third_fall(late)["falls"] and third_fall(late)["share"] == pytest.approx(0.0)
    assert not third_fall([0.0] * 10)["falls"]  # no class loss at all (one class, anchor head): nothing fell


def test_plot_skips_curves_without_a_class_loss(tmp_path):
    """A one-class set gives the anchor head a cls loss of 0 from epoch 1: drawn relative to epoch 1 it has no
    shape, so it is left out, not divided by zero."""
    rows = [{**_row("ours yolov5-cpu", 0, 0.4, [0.0, 0.0, 0.0]), "set": "single"},
            {**_row("ours yolov5-cpu-af", 0, 0.6, [2.0, 1.0, 0.5]), "set": "single"}]
    plot(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_parse_arm():
    assert parse_arm("ours:studies/models/yolov5n-af.yaml") == ("ours yolov5n-af", "ours",
                                                                "studies/models/yolov5n-af.yaml", "")
    assert parse_arm("ultralytics:yolov5n.yaml")[0] == "ultralytics yolov5n"
    assert parse_arm("ours:m/yolov5n.yaml:h/cls-over-classes.yaml") == ("ours yolov5n cls-over-classes", "ours",
                                                                        "m/yolov5n.yaml", "h/cls-over-classes.yaml")
    for bad in ("yolov5n.yaml", "mmdet:x.yaml", "ours:", "ultralytics:yolov5n.yaml:h.yaml"):
        with pytest.raises(ValueError):
            parse_arm(bad)


def test_commands_carry_model_and_seed():
    spec = RunSpec("glyphs", "ours", 30, Path("/d/data.yaml"), 160, 16, 2, Path("/o/run"),
                   model="studies/models/yolov5n-af.yaml", seed=2)
    argv, _ = command(spec, "peer-python")
    assert argv[argv.index("--model") + 1] == "studies/models/yolov5n-af.yaml" and argv[argv.index("--seed") + 1] == "2"
    argv, env = command(RunSpec("glyphs", "ultralytics", 30, Path("/d/data.yaml"), 160, 16, 2, Path("/o/run"),
                                model="yolov5n.yaml", seed=1), "peer-python")
    assert "model=yolov5n.yaml" in argv and "seed=1" in argv and env["YOLO_OFFLINE"] == "1"
    argv, _ = command(RunSpec("glyphs", "yolov8n", 3, Path("/d.yaml"), 160, 16, 2, Path("/o/r")), "py")
    assert "model=yolov8n.yaml" in argv and not any(a.startswith("seed=") for a in argv)  # bench.peers as before


def _row(arm, seed, best, curve):
    return {"set": "glyphs", "arm": arm, "seed": seed, "rc": 0, "mAP50-95_best": best, "mAP50-95_last": best - 0.01,
            "wall_s": 100.0, "cls_curve": curve}


def test_report_gives_spreads_and_the_paired_test(tmp_path):
    rows = [_row("ours yolov5n-af", s, b, [8.0, 4.0, 3.0, 3.0, 3.0, 3.0]) for s, b in ((0, 0.11), (1, 0.22), (2, 0.33))]
    rows += [_row("ultralytics yolov5n", s, b, [7.0, 7.0, 6.9, 6.9, 6.9, 6.8]) for s, b in ((0, 0.10), (1, 0.20), (2, 0.30))]
    rows.append({"set": "glyphs", "arm": "ultralytics yolov5n", "seed": 3, "rc": 1})
    text = report(rows, {"epochs": 6, "seeds": "0,1,2,3"})  # the third: epoch 2
    assert "0.2200 ± 0.1100" in text and "0.2000 ± 0.1000" in text
    line = next(x for x in text.splitlines() if x.startswith("| ours yolov5n-af - ultralytics yolov5n"))
    assert "0.0200 ± 0.0100" in line and "3.46" in line and "0.074" in line and line.rstrip(" |").endswith("no")
    assert "| 3/3 |" in text and "| 0/3 |" in text and "seed 3 (exit 1)" in text
    # differences 0.25, 0.26, 0.27: t = 0.26 / (0.01 / sqrt 3) = 45.03 over 2 df, p = 1 - 45.03 / sqrt(45.03^2 + 2)
    # = 4.9e-04 (printed so, not as 0.000)
    far = report([_row("a", s, 0.25 + 0.01 * s, [1.0]) for s in range(3)] + [_row("b", s, 0.0, [1.0]) for s in range(3)],
                 {"epochs": 1})
    assert "| 45.03 | 4.9e-04 | yes |" in far
    png = plot(rows, tmp_path / "cls.png")
    assert png.stat().st_size > 1000


def test_no_train_records_a_cut_run_and_names_what_is_missing(tmp_path, results_in_tmp):
    import json

    from bench.seeded_peers import main

    out = tmp_path / "run"
    out.mkdir()
    rows = [_row("ours yolov5n-af", 0, 0.03, [8.0, 4.0, 3.0]), _row("ultralytics yolov5n", 0, 0.02, [7.0, 6.0, 5.0])]
    meta = {"epochs": 3, "imgsz": 160, "batch": 16, "workers": 2}
    (out / "seeded.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    arms = "ours:studies/models/yolov5n-af.yaml,ultralytics:yolov5n.yaml"
    args = ["--sets", "glyphs", "--arms", arms, "--seeds", "0,1", "--epochs", "3", "--out", str(out), "--no-train",
            "--name", "cut"]
    assert main(args) == 0
    text = (results_in_tmp / "cut.md").read_text()
    assert "planned but not run (cut for time): glyphs ours yolov5n-af seed 1, glyphs ultralytics yolov5n seed 1" in text
    assert "0.0300 ± -" in text and (results_in_tmp / "cut_run_cls_loss.png").exists()
    assert "curves: cut_run_cls_loss.png" in text  # one picture per run folder: no section loses its own
    with pytest.raises(SystemExit):  # the folder's runs had 3 epochs: another count would mix commands
        main([*args[:-4], "--epochs", "30", "--out", str(out), "--no-train"])


def fake_trainings(sp, monkeypatch, tmp_path, last: float = 0.1) -> list:
    """bench.seeded_peers with every training faked (a 2-epoch results.csv in both engines' columns, best mAP
    0.1): returns the list the RunSpecs it was asked to train are appended to."""
    specs = []

    def fake_measure(spec, peer_python):
        specs.append(spec)
        spec.out.mkdir(parents=True, exist_ok=True)
        (spec.out / "results.csv").write_text("epoch,train_cls,train/cls_loss\n0,2.0,2.0\n1,1.0,1.0\n")
        return {"set": spec.set, "rc": 0, "wall_s": 1.0, "mAP50-95_best": 0.1, "mAP50-95_last": last}

    monkeypatch.setattr(sp, "measure", fake_measure)
    monkeypatch.setattr(sp, "warm_up", lambda *a: None)
    monkeypatch.setattr(sp, "generate_heldout", lambda root, sets: {s: tmp_path / s / "data.yaml" for s in sets})
    return specs


def test_a_hyp_arm_trains_ours_with_that_hyp(tmp_path, monkeypatch):
    import bench.seeded_peers as sp

    specs = fake_trainings(sp, monkeypatch, tmp_path)
    arms = "ours:m/yolov5n.yaml:h/cls-over-classes.yaml,ours:m/yolov5n-af.yaml"
    assert sp.main(["--arms", arms, "--seeds", "0", "--epochs", "2", "--out", str(tmp_path / "run"), "--no-record"]) == 0
    assert [(s.model, s.ours_args) for s in specs] == [("m/yolov5n.yaml", ("--hyp", "h/cls-over-classes.yaml")),
                                                        ("m/yolov5n-af.yaml", ())]
    assert specs[0].out.name == "ours-yolov5n-cls-over-classes-s0"
    argv, _ = command(specs[0], "py")
    assert argv[argv.index("--hyp") + 1] == "h/cls-over-classes.yaml"


def test_a_recipe_gives_both_engines_one_recipe_and_counts_ours_yolov5s_way(tmp_path, monkeypatch):
    import bench.seeded_peers as sp

    specs, counted = fake_trainings(sp, monkeypatch, tmp_path, last=0.08), []
    monkeypatch.setattr(sp, "yolov5_counting", lambda run, data, imgsz: counted.append(run) or
                        {"mAP50-95_best": 0.2, "mAP50-95_last": 0.19})
    peer = tmp_path / "peer-python"
    peer.touch()
    out = tmp_path / "run"
    assert sp.main(["--arms", "ours:m/yolov5n.yaml,yolov5:yolov5n.yaml", "--recipe", "SGD", "--seeds", "0",
                    "--epochs", "2", "--out", str(out), "--no-record", "--peer-python", str(peer)]) == 0
    hyp = str(sp.REPO / sp.RECIPES["SGD"])
    ours, theirs = (command(s, "py")[0] for s in specs)
    assert ours[ours.index("--hyp") + 1] == hyp and ours[ours.index("--optimizer") + 1] == "SGD"
    assert ours[ours.index("--close-mosaic") + 1] == "0" and "--no-automosaic" in ours
    assert theirs[theirs.index("--hyp") + 1] == hyp and theirs[theirs.index("--optimizer") + 1] == "SGD"
    assert "--no-automosaic" not in theirs
    assert counted == [specs[0].out]  # ours recounted YOLOv5's way, YOLOv5's own figures kept
    rows = {r["arm"]: r for r in __import__("json").loads((out / "seeded.json").read_text())["rows"]}
    assert rows["ours yolov5n"]["mAP50-95_best"] == 0.2 and rows["ours yolov5n"]["own_counting"]["mAP50-95_best"] == 0.1
    assert rows["yolov5 yolov5n"]["mAP50-95_best"] == 0.1
    with pytest.raises(SystemExit):  # a recipe folder resumed without it would mix recipes
        sp.main(["--arms", "ours:m/yolov5n.yaml,yolov5:yolov5n.yaml", "--seeds", "0", "--epochs", "2", "--out", str(out),
                 "--no-record", "--peer-python", str(peer)])
    for arms in ("ours:m/yolov5n.yaml:h.yaml,yolov5:yolov5n.yaml", "ultralytics:yolov5n.yaml,ours:m/yolov5n.yaml"):
        with pytest.raises(SystemExit):  # one recipe for every arm: no own hyp, no Ultralytics
            sp.main(["--arms", arms, "--recipe", "AdamW", "--out", str(tmp_path / "x"), "--no-record",
                     "--peer-python", str(peer)])
    for recipe in sp.RECIPES.values():  # both engines read every key; YOLOv5 must not rebuild the anchors
        keys = __import__("yaml").safe_load((sp.REPO / recipe).read_text())
        assert "anchors" not in keys and {"lr0", "momentum", "fl_gamma", "copy_paste"} <= set(keys)
