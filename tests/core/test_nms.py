"""NMS against a brute-force reference, class separation, post-processing and speed."""
import time

import pytest
import torch

from core.nms import batched_nms, nms, non_max_suppression


def py_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference_nms(boxes, scores, thr):
    """Textbook greedy NMS in plain Python floats."""
    boxes, scores = boxes.tolist(), scores.tolist()
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(py_iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def random_boxes(n, size=200.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 4 + 2
    return torch.cat((xy, xy + wh), 1), torch.rand(n, generator=g)


def test_nms_matches_reference_on_random_boxes():
    for seed, thr in ((0, 0.5), (1, 0.3), (2, 0.7)):
        boxes, scores = random_boxes(300, seed=seed)
        keep = nms(boxes, scores, thr)
        ref = reference_nms(boxes, scores, thr)
        assert keep.tolist() == ref  # same set, same (score) order
        assert 20 < len(ref) < 300  # the case really suppresses something


def test_nms_tiled_path_matches_single_tile(monkeypatch):
    import core.nms as nms_mod
    boxes, scores = random_boxes(500, size=300, seed=3)
    full = nms(boxes, scores, 0.45)
    monkeypatch.setattr(nms_mod, "BLOCK", 64)  # forces 8 tiles and kept-vs-tile suppression
    assert nms_mod.nms(boxes, scores, 0.45).tolist() == full.tolist()


def test_batched_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    classes = torch.tensor([0.0, 0.0, 1.0])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_batched_nms_per_class_path_equals_reference(monkeypatch):
    import core.nms as nms_mod
    boxes, scores = random_boxes(400, seed=4)
    classes = (torch.arange(400) % 3).float()
    expected = []
    for c in range(3):
        idx = (classes == c).nonzero().squeeze(1)
        expected += [int(idx[k]) for k in reference_nms(boxes[idx], scores[idx], 0.5)]
    expected.sort(key=lambda i: -float(scores[i]))
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == expected  # offset path
    monkeypatch.setattr(nms_mod, "OFFSET_MAX", 100)  # n > OFFSET_MAX -> one NMS per class
    assert nms_mod.batched_nms(boxes, scores, classes, 0.5).tolist() == expected


def test_non_max_suppression_output():
    # Two images; (cx, cy, w, h, obj, cls0, cls1)
    pred = torch.tensor([
        [[50, 50, 20, 20, 0.9, 0.9, 0.1], [51, 51, 20, 20, 0.8, 0.9, 0.1],
         [51, 51, 20, 20, 0.8, 0.1, 0.9], [150, 150, 10, 10, 0.5, 0.5, 0.5], [10, 10, 4, 4, 0.01, 1.0, 0.0]],
        [[50, 50, 20, 20, 0.0, 0.9, 0.1]] + [[0, 0, 1, 1, 0, 0, 0]] * 4]).float()
    out = non_max_suppression(pred, conf_thres=0.2, iou_thres=0.5)
    assert len(out) == 2 and out[1].shape == (0, 6)
    o = out[0]
    assert o.shape == (3, 6)
    assert torch.allclose(o[0], torch.tensor([40, 40, 60, 60, 0.81, 0]))  # conf = obj * cls
    assert torch.allclose(o[1], torch.tensor([41, 41, 61, 61, 0.72, 1]))  # other class survives
    assert torch.allclose(o[2], torch.tensor([145, 145, 155, 155, 0.25, 0]))
    assert len(non_max_suppression(pred, 0.2, 0.5, agnostic=True)[0]) == 2
    ml = non_max_suppression(pred, 0.2, 0.5, multi_label=True)[0]
    assert sorted(ml[:, 5].tolist()) == [0, 0, 1, 1]  # the 0.25/0.25 box counts for both classes
    assert len(non_max_suppression(pred, 0.2, 0.5, max_det=1)[0]) == 1


def test_nms_speed_3000_boxes():
    torch.set_num_threads(1)
    boxes, scores = random_boxes(3000, size=640, seed=5)
    nms(boxes, scores, 0.5)  # warm-up
    t = time.perf_counter()
    keep = nms(boxes, scores, 0.5)
    assert time.perf_counter() - t < 0.5
    assert 0 < len(keep) < 3000


def test_one_class_confidence_is_objectness_alone():
    # (cx, cy, w, h, obj, cls0): the class score of a one-class model is untrained and must not scale conf
    pred = torch.tensor([[[50, 50, 20, 20, 0.9, 0.5], [150, 150, 20, 20, 0.3, 0.01]]]).float()
    out = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.5)[0]
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.3]) and out[:, 5].tolist() == [0, 0]
    two = torch.cat((pred, torch.zeros(1, 2, 1)), 2)  # the same boxes with a second class: obj * cls again
    assert non_max_suppression(two, conf_thres=0.25, iou_thres=0.5)[0][:, 4].tolist() == pytest.approx([0.45])
