"""AP, matching and fitness on hand-computed cases."""
import numpy as np
import pytest
import torch

from core.metrics import ap_per_class, compute_ap, fitness, match_predictions, summarize


def test_ap_hand_computed_101_point():
    # 1 class, 3 labels, 4 predictions by decreasing conf: TP, FP, TP, FP
    # recall 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2; envelope 1, 2/3, 2/3, 1/2.
    # Recall points 0..0.33 (34) read 1, 0.34..0.66 (33) read 2/3, 0.67..1 (34) read 0.
    tp = np.array([[1], [0], [1], [0]], bool)
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.7, 0.6]), np.zeros(4), np.zeros(3))
    assert res["ap"].shape == (1, 1)
    assert res["ap"][0, 0] == pytest.approx((34 + 33 * 2 / 3) / 101, abs=1e-9)


def test_ap_order_by_confidence_not_input_order():
    tp = np.array([[0], [1], [1], [1]], bool)  # the FP is the least confident
    res = ap_per_class(tp, np.array([0.1, 0.9, 0.8, 0.7]), np.zeros(4), np.zeros(3))
    assert res["ap"][0, 0] == pytest.approx(1.0)
    # P/R are read at the best-F1 confidence on linearly interpolated curves (YOLOv5's way):
    # all 3 labels are found there, and precision lies between 3/4 (with the FP) and 1.
    assert res["r"][0] == pytest.approx(1.0, abs=1e-6)
    assert 0.75 < res["p"][0] <= 1.0


def test_ap_envelope_and_missed_labels():
    # 1 class, 4 labels: FP, TP, TP (2 of 4 found). recall 0, 1/4, 1/2; precision 0, 1/2, 2/3.
    # envelope 2/3 up to recall 1/2 -> points 0..0.5 (51) read 2/3, the rest 0.
    assert compute_ap(np.array([0, 0.25, 0.5]), np.array([0, 0.5, 2 / 3])) == pytest.approx(51 * (2 / 3) / 101)
    assert compute_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_perfect_predictions_give_one_and_columns_per_threshold():
    n = 5
    tp = np.ones((n, 10), bool)
    tp[:, 5:] = False  # matched only at the five lower IoU thresholds
    cls = np.array([0, 0, 1, 1, 2])
    res = ap_per_class(tp, np.linspace(0.9, 0.5, n), cls, cls)
    assert res["classes"].tolist() == [0, 1, 2]
    assert np.allclose(res["ap"][:, :5], 1.0) and np.allclose(res["ap"][:, 5:], 0.0)
    m = summarize(res)
    assert m["mAP50"] == pytest.approx(1.0) and m["mAP50-95"] == pytest.approx(0.5)


def test_classes_without_labels_are_not_scored_and_missing_preds_score_zero():
    tp = np.ones((2, 1), bool)
    res = ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 7]), np.array([0, 3]))
    assert res["classes"].tolist() == [0, 3]  # class 7 (no label) is not scored
    assert res["ap"][:, 0].tolist() == pytest.approx([1.0, 0.0])
    empty = ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
    assert summarize(empty) == {"P": 0.0, "R": 0.0, "mAP50": 0.0, "mAP50-95": 0.0}


def test_match_predictions_hand_case():
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30.0]])
    dets = torch.tensor([
        [0, 0, 10, 10, 0.90, 0],     # IoU 1.00 with label 0
        [0, 0, 10, 7.8, 0.95, 0],    # IoU 0.78 with label 0, more confident
        [20, 20, 30, 30, 0.80, 0],   # right place, wrong class
        [20, 20, 30, 25.2, 0.50, 1],  # IoU 0.52 with label 1
    ])
    tp = match_predictions(dets, labels)
    thr = torch.linspace(0.5, 0.95, 10)
    assert tp.shape == (4, 10)
    assert tp[1].tolist() == (thr <= 0.78).tolist()  # the confident one wins while it qualifies
    assert tp[0].tolist() == (thr > 0.78).tolist()  # then the exact box takes the label
    assert not tp[2].any()
    assert tp[3].tolist() == [True] + [False] * 9
    assert match_predictions(dets[:0], labels).shape == (0, 10)
    assert not match_predictions(dets, labels[:0]).any()


def test_fitness_dict_and_array():
    m = {"P": 0.5, "R": 0.4, "mAP50": 0.6, "mAP50-95": 0.3}
    assert fitness(m) == pytest.approx(0.1 * 0.6 + 0.9 * 0.3)
    assert fitness(m, w=(1, 0, 0, 0)) == pytest.approx(0.5)
    rows = np.array([[0.5, 0.4, 0.6, 0.3], [0, 0, 1, 1]])
    assert np.allclose(fitness(rows), [0.33, 1.0])
    with pytest.raises(KeyError):
        fitness({"P": 1.0})
    with pytest.raises(ValueError):
        fitness(m, w=(1, 2))
