"""The anchor-free head (core/model/head_af.py): build, decode by hand, the score columns under NMS, bias priors,
pruned widths, fuse, checkpoints."""
import math

import pytest
import torch

from core.checkpoint import model_from_checkpoint, save_checkpoint
from core.model import DetectAF, Model, is_anchor_free, load_arch
from core.nms import non_max_suppression
from tests.helpers import MODELS, constant_af_model

torch.set_num_threads(1)
R = 16  # reg_max of the yamls


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize('name', ['yolov5-cpu-af', 'yolov5n-af'])
def test_build_and_shapes(name):
    m = Model(MODELS / f'{name}.yaml', nc=6)
    det = m.model[-1]
    assert isinstance(det, DetectAF) and is_anchor_free(m) and is_anchor_free(MODELS / f'{name}.yaml')
    assert not is_anchor_free(MODELS / 'yolov5-cpu.yaml')
    assert (det.nl, det.na, det.no, det.reg_max, m.stride.tolist()) == (3, 1, 4 * R + 6, R, [8.0, 16.0, 32.0])
    assert 'anchors' not in m.arch and not any('anchors' in k for k in m.state_dict())
    m.train()
    raw = m(torch.zeros(2, 3, 64, 96))
    assert [tuple(r.shape) for r in raw] == [(2, 1, 64 // s, 96 // s, 4 * R + 6) for s in (8, 16, 32)]
    m.eval()
    with torch.no_grad():
        pred, raw = m(torch.zeros(2, 3, 64, 96))
    assert pred.shape == (2, sum((64 // s) * (96 // s) for s in (8, 16, 32)), 5 + 6) and len(raw) == 3
    # Ultralytics' widths: box max(16, c/4, 4 reg_max), cls max(c, min(nc, 100)), c = the P3 input
    c = m.model[17].cv3.conv.out_channels
    assert det.box[0][0].conv.out_channels == max(16, c // 4, 4 * R)
    assert det.cls[0][0].conv.out_channels == max(c, 6)
    assert [b[-1].out_channels for b in det.box] == [4 * R] * 3 and [k[-1].out_channels for k in det.cls] == [6] * 3


def test_anchor_based_architecture_still_needs_anchors():
    arch = load_arch(MODELS / 'yolov5-cpu.yaml')
    del arch['anchors']
    with pytest.raises(ValueError, match="misses 'anchors'"):
        Model(arch)


def test_decode_hand_computed():
    """Every cell: sides (l, t, r, b) = (2, 3, 4, 5) strides from its centre, scores (0.2, 0.6, 0.3)."""
    m = constant_af_model()
    with torch.no_grad():
        pred, _ = m(torch.rand(1, 3, 64, 96))
    # level 0 (stride 8, 8 x 12 cells), row 2, col 5: centre (5.5, 2.5) cells; box x from 5.5-2 to 5.5+4, y from
    # 2.5-3 to 2.5+5: centre (6.5, 3.5) cells, size 6 x 8 cells
    row = pred[0, 2 * 12 + 5]
    assert torch.allclose(row[:4], torch.tensor([6.5 * 8, 3.5 * 8, 6 * 8., 8 * 8.]), atol=1e-4)
    # level 2 (stride 32, 2 x 3 cells), the last cell (1, 2)
    assert torch.allclose(pred[0, -1, :4], torch.tensor([3.5 * 32, 2.5 * 32, 6 * 32., 8 * 32.]), atol=1e-3)
    # no objectness: obj = 1, cls = the class scores
    assert torch.allclose(row[4:], torch.tensor([1.0, 0.2, 0.6, 0.3]), atol=1e-6) and row[4] == 1.0


def test_expected_distance_is_the_mean_of_the_bins():
    """Mass split 0.25 / 0.75 between bins 3 and 4 of the left side: distance 3.75 strides."""
    m = constant_af_model(nc=1, scores=(0.9,))
    det = m.model[-1]
    for box in det.box:
        bias = box[-1].bias.data.view(4, R)
        bias[0] = -60.0
        bias[0, 3], bias[0, 4] = 0.0, math.log(3.0)  # softmax: 1/4, 3/4
    with torch.no_grad():
        pred, _ = m(torch.rand(1, 3, 64, 64))
    left = 3.75
    x1, x2 = (0.5 - left) * 8, (0.5 + 4) * 8  # cell (0, 0) of level 0
    assert torch.allclose(pred[0, 0, [0, 2]], torch.tensor([(x1 + x2) / 2, x2 - x1]), atol=1e-4)
    assert torch.allclose(pred[0, 0, 4:], torch.tensor([0.9, 1.0]), atol=1e-6)  # one class: obj = its score, cls 1


def test_nms_confidence_is_the_class_score():
    """NMS's conf = obj * cls gives each class its own score: best class only, and multi-label."""
    m = constant_af_model()
    with torch.no_grad():
        pred, _ = m(torch.rand(1, 3, 64, 64))
    det = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.0, max_det=1)[0]  # identical boxes per level
    assert det.shape == (1, 6) and int(det[0, 5]) == 1 and abs(float(det[0, 4]) - 0.6) < 1e-6
    multi = non_max_suppression(pred[:, :1], conf_thres=0.1, iou_thres=0.5, multi_label=True)[0]
    assert sorted((int(c), round(float(s), 6)) for s, c in multi[:, 4:6].tolist()) == [(0, 0.2), (1, 0.6), (2, 0.3)]
    assert non_max_suppression(pred, conf_thres=0.61)[0].shape[0] == 0  # no class reaches it


def test_bias_priors_derived_from_objects_per_image():
    m = Model(MODELS / 'yolov5-cpu-af.yaml', nc=2)
    det = m.model[-1]
    # 5 objects per 640^2 image, shared evenly by 2 classes, over (640 / s)^2 cells
    for cls, s in zip(det.cls, (8, 16, 32)):
        p = 5 / 2 / (640 / s) ** 2
        assert torch.allclose(cls[-1].bias, torch.full((2,), logit(p)))
    m.initialize_biases(class_freq=[10, 30])
    p = torch.tensor([0.25, 0.75]) * 5 / (640 / 32) ** 2
    assert torch.allclose(det.cls[2][-1].bias, torch.log(p / (1 - p)))
    assert torch.equal(det.box[1][-1].bias, torch.zeros(4 * R))  # uniform distributions


def test_pruned_widths_rebuild_and_checkpoint_reloads_weights_only(tmp_path):
    arch = load_arch(MODELS / 'yolov5-cpu-af.yaml')
    arch['channels'] = {'model.24.box.0.0': 24, 'model.24.box.0.1': 40, 'model.24.cls.2.1': 8, 'model.17.cv3': 16}
    m = Model(arch, nc=3)
    det = m.model[-1]
    assert (det.box[0][0].conv.out_channels, det.box[0][1].conv.out_channels, det.box[0][2].in_channels) == (24, 40, 40)
    assert det.box[0][0].conv.in_channels == det.cls[0][0].conv.in_channels == 16
    assert (det.cls[2][1].conv.out_channels, det.cls[2][2].in_channels, det.cls[2][2].out_channels) == (8, 8, 3)
    assert det.box[1][0].conv.out_channels == 64  # the defaults follow the unpruned widths, not model.17's 16
    path = save_checkpoint(tmp_path / 'af.pt', m.eval(), hyp={}, metrics={}, epoch=0)
    assert torch.load(path, weights_only=True)['arch']['channels']['model.24.box.0.0'] == 24
    loaded = model_from_checkpoint(path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], m(x)[0])


def test_fuse_keeps_the_outputs():
    torch.manual_seed(0)
    m = Model(MODELS / 'yolov5-cpu-af.yaml', nc=3)
    m.train()(torch.rand(4, 3, 64, 64))  # BN statistics that are not the identity
    m.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = m(x)[0]
        after = m.fuse()(x)[0]
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)
