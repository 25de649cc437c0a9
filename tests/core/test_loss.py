"""ComputeLoss: target assignment on a hand-made case, CIoU by hand, focal / smoothing, gradients."""
import math

import pytest
import torch
import torch.nn as nn

from core.boxes import bbox_iou, box_iou, xywh2xyxy
from core.loss import ComputeLoss, FocalLoss

HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0}


class FakeDetect(nn.Module):
    def __init__(self, anchors, nc=3):
        super().__init__()
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))
        self.nl, self.na = self.anchors.shape[:2]
        self.nc, self.no = nc, nc + 5
        self.m = nn.ModuleList(nn.Conv2d(1, self.na * self.no, 1) for _ in range(self.nl))


class FakeModel(nn.Module):
    """Only what ComputeLoss reads: parameters and model[-1] = Detect."""

    def __init__(self, anchors, nc=3):
        super().__init__()
        self.model = nn.Sequential(FakeDetect(anchors, nc))


ANCHORS = [[[1.25, 1.25], [2, 2], [10, 10]],  # level 0 (8x8 grid)
           [[1, 1], [5, 5], [0.2, 0.2]],  # level 1 (4x4)
           [[4, 4], [4, 4], [4, 4]]]  # level 2 (2x2)


def fake_preds(nc=3, bs=1, fill=0.0):
    return [torch.full((bs, 3, s, s, nc + 5), fill, requires_grad=True) for s in (8, 4, 2)]


def test_build_targets_hand_case():
    loss = ComputeLoss(FakeModel(ANCHORS), HYP)
    target = torch.tensor([[0, 1, 0.3, 0.6, 0.25, 0.25]])
    tcls, tbox, indices, anch = loss.build_targets(fake_preds(), target)

    # Level 0: centre (2.4, 4.8), wh (2, 2) cells. Anchors 0, 1 pass (ratio 1.6, 1), anchor 2 fails
    # (ratio 5 > 4). x frac .4 < .5 -> left neighbour; y frac .8 -> the cell below (5).
    b, a, gj, gi = indices[0]
    got = sorted(zip(a.tolist(), gj.tolist(), gi.tolist(), tbox[0][:, 0].tolist(), tbox[0][:, 1].tolist()))
    want = sorted((an, j, i, x, y) for an in (0, 1)
                  for (j, i, x, y) in ((4, 2, 0.4, 0.8), (4, 1, 1.4, 0.8), (5, 2, 0.4, -0.2)))
    assert [g[:3] for g in got] == [w[:3] for w in want]
    assert torch.allclose(torch.tensor([g[3:] for g in got]), torch.tensor([w[3:] for w in want]), atol=1e-5)
    assert (b == 0).all() and (tcls[0] == 1).all()
    assert torch.allclose(tbox[0][:, 2:], torch.tensor([2.0, 2.0]))
    assert torch.equal(anch[0], loss.anchors[0][a])

    # Level 1: centre (1.2, 2.4), wh (1, 1): only anchor 0; left (gi 0) and upper (gj 1) neighbours.
    b, a, gj, gi = indices[1]
    assert sorted(zip(a.tolist(), gj.tolist(), gi.tolist())) == [(0, 1, 1), (0, 2, 0), (0, 2, 1)]
    # Level 2: wh 0.5 vs anchors 4 -> ratio 8, nothing assigned.
    assert indices[2][0].numel() == 0 and tbox[2].shape == (0, 4)


def test_build_targets_no_neighbour_outside_the_grid():
    loss = ComputeLoss(FakeModel(ANCHORS), HYP)
    # Centre (0.4, 7.6) on the 8x8 grid, in the bottom-left corner cell.
    _, _, indices, _ = loss.build_targets(fake_preds(), torch.tensor([[0, 0, 0.05, 0.95, 0.25, 0.25]]))
    b, a, gj, gi = indices[0]
    # x: frac .4 < .5 but x < 1 -> no left cell; y: frac .6, distance to far edge .4 < 1 -> none.
    assert sorted(set(zip(gj.tolist(), gi.tolist()))) == [(7, 0)]


def test_ciou_giou_diou_by_hand():
    b1, b2 = torch.tensor([0.0, 0, 2, 2]), torch.tensor([1.0, 0, 2, 4])  # xywh
    # xyxy (-1,-1,1,1) and (0,-2,2,2): inter 1*2, union 4+8-2, enclosing 3x4, centre distance 1.
    iou = 2 / 10
    v = 4 / math.pi ** 2 * (math.atan(2 / 4) - math.atan(2 / 2)) ** 2
    alpha = v / (v - iou + 1)
    assert float(bbox_iou(b1, b2)) == pytest.approx(iou, abs=1e-6)
    assert float(bbox_iou(b1, b2, GIoU=True)) == pytest.approx(iou - (12 - 10) / 12, abs=1e-6)
    assert float(bbox_iou(b1, b2, DIoU=True)) == pytest.approx(iou - 1 / 25, abs=1e-6)
    assert float(bbox_iou(b1, b2, CIoU=True)) == pytest.approx(iou - 1 / 25 - v * alpha, abs=1e-6)
    assert float(bbox_iou(xywh2xyxy(b1), xywh2xyxy(b2), xywh=False, CIoU=True)) == \
        pytest.approx(iou - 1 / 25 - v * alpha, abs=1e-6)
    assert float(box_iou(xywh2xyxy(b1)[None], xywh2xyxy(b2)[None])) == pytest.approx(iou, abs=1e-6)


def test_zero_targets_give_objectness_only():
    loss = ComputeLoss(FakeModel(ANCHORS), HYP)
    preds = fake_preds(bs=2)
    total, items = loss(preds, torch.zeros((0, 6)))
    # All logits 0 and no positives: obj BCE = log 2 per level, times balance (4 + 1 + 0.4).
    assert items[0] == 0 and items[2] == 0
    assert float(items[1]) == pytest.approx(math.log(2) * 5.4, rel=1e-5)
    assert float(total.detach()) == pytest.approx(2 * float(items.sum()), rel=1e-6)


def test_label_smoothing_and_single_class():
    target = torch.tensor([[0, 1, 0.3, 0.6, 0.25, 0.25]])
    preds = fake_preds()
    with torch.no_grad():  # confident and right about class 1 everywhere
        for p in preds:
            p[..., 5:] = -8.0
            p[..., 6] = 8.0
    plain = ComputeLoss(FakeModel(ANCHORS), HYP)(preds, target)[1]
    smooth = ComputeLoss(FakeModel(ANCHORS), HYP, label_smoothing=0.2)(preds, target)[1]
    assert smooth[2] > 10 * plain[2] > 0  # smoothing punishes over-confidence
    assert torch.allclose(smooth[:2], plain[:2])
    # smoothed targets 0.9 / 0.1 -> per element BCE(8, 0.9) = BCE(-8, 0.1), mean over all
    x = torch.tensor(8.0)
    bce = -(0.9 * torch.log(torch.sigmoid(x)) + 0.1 * torch.log(1 - torch.sigmoid(x)))
    n_levels_with_targets = 2  # level 2 has no assignment
    assert float(smooth[2]) == pytest.approx(float(bce) * n_levels_with_targets * HYP["cls"], rel=1e-4)
    one = ComputeLoss(FakeModel(ANCHORS, nc=1), HYP)(fake_preds(nc=1), target)[1]
    assert one[2] == 0 and one[0] > 0


def test_focal_loss_formula_and_effect():
    pred, true = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(pred)
    bce = nn.functional.binary_cross_entropy_with_logits(pred, true, reduction="none")
    p_t = torch.where(true == 1, p, 1 - p)
    a_t = torch.where(true == 1, torch.tensor(0.25), torch.tensor(0.75))
    want = (bce * a_t * (1 - p_t) ** 1.5).mean()
    assert float(FocalLoss(nn.BCEWithLogitsLoss(), 1.5)(pred, true)) == pytest.approx(float(want), rel=1e-6)

    target = torch.tensor([[0, 1, 0.3, 0.6, 0.25, 0.25]])
    preds = fake_preds()
    plain = ComputeLoss(FakeModel(ANCHORS), HYP)(preds, target)[1]
    focal = ComputeLoss(FakeModel(ANCHORS), {**HYP, "fl_gamma": 1.5})(preds, target)[1]
    # logits 0 -> p_t = 0.5: every element is scaled by alpha_t * 0.5**1.5, so obj/cls shrink, box is unchanged
    assert focal[0] == pytest.approx(float(plain[0]))
    assert 0 < focal[1] < 0.75 * 0.5 ** 1.5 * plain[1] + 1e-6
    assert 0 < focal[2] < plain[2]


@pytest.fixture(scope="module")
def real_model():
    from core.model.yolo import Model
    torch.manual_seed(0)
    return Model("studies/models/yolov5-cpu.yaml", nc=3).train()


def test_real_model_loss_and_gradients(real_model):
    torch.set_num_threads(1)
    model = real_model
    model.zero_grad()
    imgs = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [0, 2, 0.2, 0.7, 0.1, 0.1], [1, 1, 0.6, 0.3, 0.5, 0.2]])
    preds = model(imgs)
    loss_fn = ComputeLoss(model, HYP)
    total, items = loss_fn(preds, targets)
    assert torch.isfinite(total) and total > 0 and (items > 0).all()
    total.backward()
    detect = model.model[-1]
    for conv in detect.m:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    first = model.model[0].conv.weight.grad
    assert first is not None and first.abs().sum() > 0

    empty_total, empty_items = loss_fn(model(imgs), torch.zeros((0, 6)))
    assert torch.isfinite(empty_total) and empty_total > 0
    assert empty_items[0] == 0 and empty_items[2] == 0 and empty_items[1] > 0

    # AMP-style half-precision maps: computed in fp32, close to the fp32 result
    half_total, _ = loss_fn([p.detach().half() for p in preds], targets)
    assert half_total.dtype == torch.float32
    assert float(half_total) == pytest.approx(float(total.detach()), rel=1e-2)
