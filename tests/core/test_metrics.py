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



def test_ap_yolov5_rule_hand_computed():
    # The curve above with YOLOv5's sentinels (0, 1) and (1, 0) and its envelope, read linearly at
    # recall k/100: 1 for k <= 33, 2/3 for k = 34..66, then the line from (2/3, 1/2) to (1, 0):
    # 1.5 (1 - k/100) for k = 67..100. Trapezoids: 0.01 * (sum - (first + last) / 2)
    # = 0.01 * (34 + 22 + 1.5 * (0 + 1 + ... + 33) / 100 - 0.5) = 0.63915 (COCO's step rule: 0.5545).
    tp = np.array([[1], [0], [1], [0]], bool)
    args = (tp, np.array([0.9, 0.8, 0.7, 0.6]), np.zeros(4), np.zeros(3))
    assert ap_per_class(*args, ap_method="yolov5")["ap"][0, 0] == pytest.approx(0.63915, abs=1e-9)
    assert ap_per_class(*args)["ap"][0, 0] == pytest.approx(56 / 101, abs=1e-9)  # the default is COCO's
    assert compute_ap(np.ones(1), np.ones(1), "yolov5") == pytest.approx(0.995)  # YOLOv5's perfect score
    assert compute_ap(np.zeros(0), np.zeros(0), "yolov5") == 0.0
    with pytest.raises(ValueError, match="not one of coco, yolov5"):
        compute_ap(np.ones(1), np.ones(1), "voc")

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


class _FixedPredictions(torch.nn.Module):
    """An eval-surface model that predicts the same (1, N, 5 + nc) tensor for every image."""

    def __init__(self, pred):
        super().__init__()
        self.pred = torch.nn.Parameter(pred, requires_grad=False)

    def forward(self, x):
        return self.pred.expand(x.shape[0], -1, -1), None


def test_validation_multi_label_counts_a_second_class_above_the_threshold():
    from core.val import validate
    # one 64x64 image, one label of class 1 at the centre (20 x 20 px)
    batch = (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.tensor([[0, 1, 0.5, 0.5, 20 / 64, 20 / 64]]),
             ("a.jpg",), (None,))
    # a box on the label, obj 0.9, class scores 0.8 (class 0) and 0.6 (class 1): conf 0.72 and 0.54
    model = _FixedPredictions(torch.tensor([[[32.0, 32.0, 20.0, 20.0, 0.9, 0.8, 0.6]]]))
    single = validate(model, [batch], progress=False)
    assert single["mAP50"] == 0.0  # only the best class (0) is kept: the class-1 label is missed
    multi = validate(model, [batch], progress=False, multi_label=True)
    assert multi["mAP50"] == pytest.approx(1.0) and multi["mAP50-95"] == pytest.approx(1.0)
    yolov5 = validate(model, [batch], progress=False, multi_label=True, ap_method="yolov5")
    assert yolov5["mAP50"] == pytest.approx(0.995)  # YOLOv5's val.py scores a perfect detection 0.995
