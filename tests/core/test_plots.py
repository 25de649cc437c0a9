"""Run folder pictures (core/plots.py): the confusion matrix on a hand-made case, the curves against the
metrics they illustrate, the files a training writes, and that drawing them changes no number."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import core.train
from core.callbacks import Callbacks
from core.confusion import ConfusionMatrix
from core.metrics import ap_per_class, summarize
from core.plots import RunPlots, ValPlots, plot_confusion_matrix, plot_curves, plot_images, pr_area
from core.run_dir import read_history
from core.train import fit
from tests.helpers import MODEL, train_opts



def pictures(val_batches: int = 3) -> list[str]:
    return ["labels.png", "results.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png",
            "confusion_matrix.png"] + [f"train_batch{i}.jpg" for i in range(3)] + \
        [f"val_batch{i}_{k}.jpg" for i in range(min(val_batches, 3)) for k in ("labels", "pred")]


PR_TOLERANCE = 0.011  # 101-sample mean vs integral of a decreasing curve in [0, 1]: at most 1/101 (core.metrics)


def det(*rows):  # [x1, y1, x2, y2, conf, cls]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


def lab(*rows):  # [cls, x1, y1, x2, y2]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


def test_confusion_matrix_hand_made():
    cm = ConfusionMatrix(nc=3, conf=0.25, iou_thres=0.45)
    # image 1: A (class 0) found right, and found twice (the duplicate is a false positive); B (class 1) found
    # as class 2; C (class 2) missed; a class-1 box where nothing is (false positive); a confident-enough
    # class-0 box below the confidence threshold (ignored)
    cm.update(det([0, 0, 10, 10, 0.9, 0], [1, 0, 11, 10, 0.8, 0], [20, 20, 30, 30, 0.7, 2],
                  [50, 50, 60, 60, 0.6, 1], [40, 0, 50, 10, 0.1, 0]),
              lab([0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [2, 70, 70, 80, 80]))
    # image 2: one label, nothing predicted (missed); image 3: no label, one prediction (false positive)
    cm.update(det(), lab([1, 0, 0, 10, 10]))
    cm.update(det([0, 0, 10, 10, 0.5, 2]), lab())
    expected = np.zeros((4, 4), int)  # [predicted, true], background last
    expected[0, 0] = 1                # A right
    expected[2, 1] = 1                # B as class 2
    expected[3, 2] = 1                # C missed
    expected[3, 1] = 1                # image 2's class-1 object missed
    expected[0, 3] = 1                # the duplicate on A
    expected[1, 3] = 1                # the class-1 box on nothing
    expected[2, 3] = 1                # image 3's prediction
    np.testing.assert_array_equal(cm.matrix, expected)
    tp, fp, fn = cm.tp_fp_fn()
    np.testing.assert_array_equal(tp, [1, 0, 0])
    np.testing.assert_array_equal(fp, [1, 1, 2])
    np.testing.assert_array_equal(fn, [0, 2, 1])
    # class 1's two objects: one taken for class 2, one missed
    np.testing.assert_allclose(cm.normalized()[:, 1], [0, 0, 0.5, 0.5])


def test_confusion_matrix_greedy_by_iou():
    """Two predictions over one label: the higher IoU wins whatever its confidence; the other is a false positive."""
    cm = ConfusionMatrix(nc=2)
    cm.update(det([0, 0, 10, 12, 0.9, 1], [0, 0, 10, 10, 0.5, 0]), lab([0, 0, 0, 10, 10]))
    assert cm.matrix[0, 0] == 1 and cm.matrix[1, 2] == 1 and cm.matrix.sum() == 2


def random_scores(seed: int, nc: int = 4, n: int = 400):
    """Predictions whose hits get higher confidence, so the curves have shape."""
    rng = np.random.default_rng(seed)
    target_cls = rng.integers(0, nc, 150)
    pred_cls = rng.integers(0, nc, n)
    hit = rng.random(n) < 0.35
    conf = np.clip(rng.random(n) * 0.6 + hit * 0.3, 0, 1)
    tp = np.stack([hit & (rng.random(n) < 1 - k / 12) for k in range(10)], 1)
    return tp, conf, pred_cls, target_cls


@pytest.mark.parametrize("method", ["coco", "yolov5"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pr_curve_area_is_map50(method, seed):
    res = ap_per_class(*random_scores(seed), ap_method=method)
    m = summarize(res)
    assert m["mAP50"] > 0.1
    assert abs(pr_area(res) - m["mAP50"]) <= PR_TOLERANCE
    # control: the curve the F1 picture marks gives the reported P and R at the chosen confidence
    k = int(np.argmin(np.abs(res["px"] - res["conf"])))
    assert res["p_curve"][:, k].mean() == pytest.approx(m["P"]) and res["r_curve"][:, k].mean() == pytest.approx(m["R"])


def test_curve_and_matrix_pictures(tmp_path):
    res = ap_per_class(*random_scores(0))
    paths = plot_curves(res, ["a", "b", "c", "d"], tmp_path)
    assert sorted(paths) == ["F1_curve", "PR_curve", "P_curve", "R_curve"]
    cm = ConfusionMatrix(3)
    cm.update(det([0, 0, 10, 10, 0.9, 0]), lab([0, 0, 0, 10, 10], [1, 20, 20, 30, 30]))
    plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png")
    for p in [*paths.values(), tmp_path / "cm.png"]:
        img = cv2.imread(str(p))
        assert img is not None and img.shape[0] > 300 and img.std() > 10  # drawn, not blank


def test_batch_picture_tiles(tmp_path):
    imgs = torch.full((5, 3, 64, 96), 128, dtype=torch.uint8)
    boxes = [np.array([[1, 10, 10, 40, 40]])] * 5
    out = plot_images(imgs, boxes, [f"im{i}.jpg" for i in range(5)], ["a", "b"], tmp_path / "b.jpg")
    img = cv2.imread(str(out))
    # 5 images -> 3 columns, 2 rows; tiles upscaled so the long side is 256 px
    assert img.shape == (2 * 170, 3 * 256, 3)


def test_training_writes_pictures_and_curves_match_results(tiny_data, tmp_path, monkeypatch):
    runs: list[RunPlots] = []

    class Recorded(RunPlots):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            runs.append(self)

    monkeypatch.setattr(core.train, "RunPlots", Recorded)
    instances = []
    # batch 2: the 8 val images come in batches of 4, so two val_batch pictures of each kind
    result = fit(tiny_data, MODEL,
                 opts=train_opts(tmp_path, epochs=2, batch_size=2, imgsz=96, close_mosaic=0, plots=True),
                 callbacks=Callbacks(on_val_end=lambda epoch, vm: instances.append(vm["instances"])))
    run, expected = result.save_dir, pictures(val_batches=2)
    assert not [p for p in expected if not (run / p).is_file()]
    assert not (run / "val_batch2_pred.jpg").exists()
    last = read_history(run / "results.csv")[-1]
    (plots,) = runs
    assert isinstance(plots.last, ValPlots) and plots.last.result is not None
    area = pr_area(plots.last.result)
    assert abs(area - last["mAP50"]) <= PR_TOLERANCE + 1e-6  # results.csv keeps 6 significant digits
    nc = plots.last.confusion.nc
    assert plots.last.confusion.matrix[:, :nc].sum() == instances[-1]  # each object once: matched or missed
    assert sorted(plots.written) == sorted(p.rsplit(".", 1)[0] for p in expected)


def test_no_plots_changes_no_number(tiny_data, tmp_path):
    """Pictures off: no picture, results.csv kept; and the numbers are the same with them on."""
    on = fit(tiny_data, MODEL, opts=train_opts(tmp_path, name="on", close_mosaic=0, plots=True, tensorboard="auto"))
    off = fit(tiny_data, MODEL, opts=train_opts(tmp_path, name="off", close_mosaic=0, plots=False))
    assert (off.save_dir / "results.csv").is_file()
    assert not [p for p in pictures() if (off.save_dir / p).exists()]
    keys = ["train_box", "train_obj", "train_cls", "P", "R", "mAP50", "mAP50-95", "val_box"]
    assert [[h[k] for k in keys] for h in on.history] == [[h[k] for k in keys] for h in off.history]


def test_evolution_trials_draw_no_pictures(cfg_for, tmp_path):
    from core.hyp import load_hyp
    from evolve.objective import Objective
    from evolve.space import load_space
    cfg = cfg_for("pictures")
    objective = Objective(cfg, load_space(cfg.resolved("space")), load_hyp(cfg.resolved("hyp")), tmp_path)
    assert objective.train_options(3).plots is False


@pytest.mark.parametrize("epochs", [1, 5, 14, 30])
def test_results_picture_any_length(tmp_path, epochs):
    """results.png for any number of epochs (its trend line once had an even window at 14)."""
    from core.plots import plot_results
    from core.run_dir import RESULT_COLUMNS, write_results
    rows = [{k: (e if k == "epoch" else 1.0 / (e + 1)) for k in RESULT_COLUMNS} for e in range(epochs)]
    write_results(tmp_path / "results.csv", rows)
    img = cv2.imread(str(plot_results(tmp_path / "results.csv")))
    assert img.shape == (600, 1500, 3)


def test_results_picture_keeps_to_its_share(tmp_path, monkeypatch):
    """results.png is skipped while its drawing would pass 2% of the training time, and drawn at the end."""
    import core.plots
    from core.run_dir import RESULT_COLUMNS, write_results
    write_results(tmp_path / "results.csv", [{k: 0.5 for k in RESULT_COLUMNS} | {"epoch": 0}])
    draws = []

    def one_second(csv, out=None):
        draws.append(csv)
        plots.seconds["results.png"] = plots.seconds.get("results.png", 0.0) + 1.0  # as if it took 1 s
        return tmp_path / "results.png"

    monkeypatch.setattr(core.plots, "plot_results", one_second)
    plots = RunPlots(tmp_path, ["a"])
    monkeypatch.setattr(plots, "_safe", lambda what, draw, *args: draw(*args))
    for epoch in range(1, 51):  # 1 s per draw, 20 s epochs: 2% allows one draw per 50 s of training
        plots.results(tmp_path / "results.csv", epoch_seconds=20.0)
        assert len(draws) <= 0.02 * 20.0 * epoch + 1  # within the share, give or take the draw that passes it
    assert 18 <= len(draws) <= 21  # about 1000 s x 2% / 1 s, where every epoch would have been 50
    plots.results(tmp_path / "results.csv", epoch_seconds=1.0)  # a last short epoch: skipped
    drawn, due = len(draws), plots.results_due is not None
    plots.final()
    assert due and len(draws) == drawn + 1 and plots.results_due is None  # the last epoch's table is drawn at the end
