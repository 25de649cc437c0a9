"""The anchor-free loss (core/loss_af.py) and its task-aligned assigner (core/assign.py): hand-computed cases,
an overfit batch, and the trainer's choices for the anchor-free head (loss, gains, AutoAnchor)."""
import logging
import math

import pytest
import torch

import core.train
from core.assign import TaskAlignedAssigner
from core.hyp import default_hyp, load_hyp
from core.loss import ComputeLoss
from core.loss_af import BOX_SCALE, ComputeLossAF, dfl_loss, gt_tensors, scaled_gains_af
from core.model import Model
from tests.helpers import MODELS, train_opts

torch.set_num_threads(1)

# A 4 x 4 grid of anchor points at stride 8 (centres 4, 12, 20, 28 px) and two objects:
# A = [0, 0, 16, 16] (class 0) holds the points (4, 4), (12, 4), (4, 12), (12, 12);
# B = [8, 8, 32, 32] (class 1) holds the 9 points with x, y in {12, 20, 28}; (12, 12) is inside both.
XS = (4.0, 12.0, 20.0, 28.0)
POINTS = torch.tensor([(x, y) for y in XS for x in XS])  # row-major: index = 4 * row + col


def idx(x: float, y: float) -> int:
    return 4 * XS.index(y) + XS.index(x)


def square(cx: float, cy: float, side: float) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def hand_case(score_b_12_20: float = 0.5):
    """Predicted boxes concentric with the object they sit in (so CIoU = IoU = (side ratio)^2), except the
    shared point (12, 12), whose box [6, 6, 26, 26] is off both centres. Scores 0.5 everywhere, except class 1
    at (12, 20)."""
    boxes = [square(16, 16, 4) for _ in range(16)]  # far from everything else: IoU small, never in a top 4
    for (x, y), side in {(4, 4): 16, (12, 4): 12, (4, 12): 8}.items():
        boxes[idx(x, y)] = square(8, 8, side)
    for x in (12, 20, 28):
        for y in (12, 20, 28):
            boxes[idx(x, y)] = square(20, 20, 12)
    boxes[idx(20, 20)] = square(20, 20, 24)
    boxes[idx(12, 20)] = boxes[idx(20, 12)] = square(20, 20, 20)
    boxes[idx(12, 12)] = [6, 6, 26, 26]
    scores = torch.full((1, 16, 2), 0.5)
    scores[0, idx(12, 20), 1] = score_b_12_20
    gt_boxes = torch.tensor([[[0, 0, 16, 16], [8, 8, 32, 32], [0, 0, 32, 32]]], dtype=torch.float32)
    gt_labels = torch.tensor([[0, 1, 0]])
    gt_mask = torch.tensor([[True, True, False]])  # the third slot is padding: it must take nothing
    return scores, torch.tensor([boxes], dtype=torch.float32), gt_labels, gt_boxes, gt_mask


def ciou_of_squares(a, b):
    """CIoU of two axis-aligned squares (no aspect term): IoU - centre distance^2 / enclosing diagonal^2."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) ** 2 + (b[2] - b[0]) ** 2 - inter
    rho2 = ((a[0] + a[2] - b[0] - b[2]) ** 2 + (a[1] + a[3] - b[1] - b[3]) ** 2) / 4
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    return inter / union - rho2 / c2


def test_assigner_hand_case():
    scores, boxes, labels, gts, mask = hand_case(score_b_12_20=0.9)
    u_a = ciou_of_squares([0, 0, 16, 16], [6, 6, 26, 26])   # 100/556 - 128/1352 = 0.0852
    u_b = ciou_of_squares([8, 8, 32, 32], [6, 6, 26, 26])   # 324/652 - 32/1352 = 0.4733
    assert 0 < u_a < u_b
    out = TaskAlignedAssigner(nc=2, topk=4)(scores, boxes, POINTS, labels, gts, mask)
    # A's top 4 are all four of its points, B's top 4 (20,20), (12,20), (20,12) and the shared (12, 12), which
    # goes to B, its better overlap
    want = {(4, 4): 0, (12, 4): 0, (4, 12): 0, (20, 20): 1, (12, 20): 1, (20, 12): 1, (12, 12): 1}
    assert sorted(out.fg[0].nonzero().flatten().tolist()) == sorted(idx(*p) for p in want)
    for p, g in want.items():
        assert int(out.gt_index[0, idx(*p)]) == g and int(out.labels[0, idx(*p)]) == g, p
        assert out.boxes[0, idx(*p)].tolist() == gts[0, g].tolist()
    # target score = t / max t * max IoU per object, t = s^0.5 u^6; each object's best point has IoU 1 at s 0.5
    expected = {(4, 4): 1.0, (12, 4): (12 / 16) ** 12, (4, 12): (8 / 16) ** 12,
                (20, 20): 1.0, (20, 12): (20 / 24) ** 12, (12, 12): u_b ** 6,
                (12, 20): math.sqrt(0.9 / 0.5) * (20 / 24) ** 12}  # the higher class score raises its share
    for p, v in expected.items():
        row = out.scores[0, idx(*p)]
        assert abs(float(row[want[p]]) - v) < 1e-5 * max(1.0, v), (p, float(row[want[p]]), v)
        assert float(row[1 - want[p]]) == 0.0
    assert float(out.scores[0, ~out.fg[0]].abs().sum()) == 0.0


def test_assigner_topk_and_best_point_score():
    """With topk 2, A keeps (4, 4) and (12, 4); a higher score at the best point leaves its target at the IoU."""
    scores, boxes, labels, gts, mask = hand_case()
    scores[0, idx(4, 4), 0] = 0.8
    out = TaskAlignedAssigner(nc=2, topk=2)(scores, boxes, POINTS, labels, gts, mask)
    got_a = sorted(i for i in out.fg[0].nonzero().flatten().tolist() if int(out.gt_index[0, i]) == 0)
    assert got_a == sorted([idx(4, 4), idx(12, 4)])
    assert abs(float(out.scores[0, idx(4, 4), 0]) - 1.0) < 1e-6
    t = math.sqrt(0.5) * (12 / 16) ** 12  # (12, 4) against the best t = sqrt(0.8) * 1
    assert abs(float(out.scores[0, idx(12, 4), 0]) - t / math.sqrt(0.8)) < 1e-6


def test_assigner_without_objects_is_all_background():
    scores, boxes, *_ = hand_case()
    out = TaskAlignedAssigner(nc=2)(scores, boxes, POINTS, torch.zeros(1, 0, dtype=torch.long),
                                    torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool))
    assert not out.fg.any() and float(out.scores.sum()) == 0.0


def test_dfl_hand_computed():
    """Logits (0, 1, 2, 0), target 1.3: 0.7 x CE at bin 1 + 0.3 x CE at bin 2."""
    logits = torch.tensor([0.0, 1.0, 2.0, 0.0]).expand(1, 4, 4)
    lse = math.log(1 + math.e + math.e ** 2 + 1)
    want = 0.7 * (lse - 1) + 0.3 * (lse - 2)
    assert abs(float(dfl_loss(logits, torch.full((1, 4), 1.3))) - want) < 1e-6
    # a whole distance uses one bin only; the sides are averaged
    t = torch.tensor([[2.0, 0.0, 1.0, 2.5]])
    side = [lse - 2, lse - 0, lse - 1, 0.5 * (lse - 2) + 0.5 * (lse - 0)]
    assert abs(float(dfl_loss(logits, t)) - sum(side) / 4) < 1e-6


def test_dfl_is_smallest_at_the_two_bin_distribution():
    """Over distributions, DFL for target 1.3 is minimal at mass (0.7, 0.3) on bins 1, 2, whose mean is 1.3."""
    best = torch.log(torch.tensor([1e-9, 0.7, 0.3, 1e-9])).expand(1, 4, 4)
    target = torch.full((1, 4), 1.3)
    floor = float(dfl_loss(best, target))
    torch.manual_seed(0)
    for _ in range(20):
        assert float(dfl_loss(best + 0.3 * torch.randn(1, 4, 4), target)) > floor


def test_gt_tensors_pad_per_image():
    t = torch.tensor([[1, 2, 0.5, 0.5, 0.5, 0.25], [0, 1, 0.25, 0.5, 0.5, 0.5], [1, 0, 0.5, 0.5, 1.0, 1.0]])
    labels, boxes, mask = gt_tensors(t, 3, (64.0, 32.0))  # input 64 wide, 32 high
    assert mask.tolist() == [[True, False], [True, True], [False, False]]
    assert labels[1].tolist() == [2, 0] and labels[0, 0] == 1
    assert boxes[1, 0].tolist() == [16.0, 12.0, 48.0, 20.0] and boxes[1, 1].tolist() == [0.0, 0.0, 64.0, 32.0]


def overfit_batch():
    torch.manual_seed(0)
    model = Model(MODELS / 'yolov5-cpu-af.yaml', nc=3).train()
    x = torch.rand(2, 3, 64, 64)
    t = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.4], [0, 2, 0.2, 0.3, 0.2, 0.3], [1, 0, 0.6, 0.6, 0.6, 0.5]])
    return model, x, t


def test_loss_falls_on_an_overfit_batch():
    model, x, t = overfit_batch()
    loss_fn = ComputeLossAF(model, scaled_gains_af(load_hyp(None)))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    first = None
    for _ in range(25):
        loss, items = loss_fn(model(x), t)
        first = items if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and loss.shape == ()
    assert (items < 0.5 * first).all(), (first.tolist(), items.tolist())  # box, dfl and cls each fall


def test_loss_parts_follow_the_gains_and_the_batch():
    model, x, t = overfit_batch()
    raw = model(x)
    hyp = scaled_gains_af(default_hyp())
    loss, items = ComputeLossAF(model, hyp)(raw, t)
    assert abs(float(loss.detach()) - 2 * float(items.sum())) < 1e-4  # x batch size, as ComputeLoss
    doubled = ComputeLossAF(model, {**hyp, 'dfl': 2 * hyp['dfl'], 'cls': 0.0})(raw, t)[1]
    assert torch.allclose(doubled, items * torch.tensor([1.0, 2.0, 0.0]), rtol=1e-5)
    # no objects: only the class term, every score pushed to 0, divided by max(sum of target scores, 1) = 1
    _, empty = ComputeLossAF(model, hyp)(raw, torch.zeros(0, 6))
    logits = torch.cat([r.detach().reshape(2, -1, r.shape[-1])[..., -3:] for r in raw], 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction='sum')
    assert empty[:2].tolist() == [0.0, 0.0] and abs(float(empty[2]) - hyp['cls'] * float(bce)) < 1e-3


def test_trainer_picks_the_loss_and_gains_by_head(tmp_path):
    hyp = default_hyp()
    assert hyp['dfl'] == 1.5 and hyp['box'] == 0.05  # the anchor-based defaults are unchanged
    opts = train_opts(tmp_path, imgsz=96)
    af = core.train._loss(Model(MODELS / 'yolov5-cpu-af.yaml', nc=3), hyp, 3, opts)
    assert isinstance(af, ComputeLossAF)
    assert (af.hyp['box'], af.hyp['cls'], af.hyp['dfl']) == (0.05 * BOX_SCALE, 0.5, 1.5) == (7.5, 0.5, 1.5)
    assert isinstance(core.train._loss(Model(MODELS / 'yolov5-cpu.yaml', nc=3), hyp, 3, opts), ComputeLoss)


def test_autoanchor_skipped_for_the_anchor_free_head(tmp_path, caplog):
    net = Model(MODELS / 'yolov5-cpu-af.yaml', nc=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    hyp = {**default_hyp(), 'anchors': 5}  # would refit a Detect head
    with caplog.at_level(logging.INFO, logger='core.train'):
        core.train._fit_anchors(net, None, hyp, train_opts(tmp_path), fresh=True, resumed=False)
    assert [r.message for r in caplog.records if 'AutoAnchor' in r.message] == [
        'AutoAnchor skipped: the anchor-free head (DetectAF) has no anchors (hyp anchors, anchor_t unused)']
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_label_smoothing_is_ignored_with_a_warning(smoothing, caplog):
    model, x, t = overfit_batch()
    with caplog.at_level(logging.WARNING, logger='core.loss_af'):
        ComputeLossAF(model, scaled_gains_af(default_hyp()), label_smoothing=smoothing)
    assert any('label smoothing' in r.message for r in caplog.records) == (smoothing > 0)


def _with_switches(switches: dict | None):
    """overfit_batch's model with the model yaml's `loss_af:` switches set (None: no key at all)."""
    model, x, t = overfit_batch()
    if switches is not None:
        model.arch['loss_af'] = switches
    return model, x, t


def _recording(loss_fn: ComputeLossAF) -> list:
    """Keep every Assignment the loss's assigner returns."""
    seen, assign = [], loss_fn.assigner
    loss_fn.assigner = lambda *a: seen.append(assign(*a)) or seen[-1]
    return seen


def test_loss_switches_default_to_yolov8s():
    model, x, t = _with_switches(None)
    raw, hyp = model(x), scaled_gains_af(default_hyp())
    plain = ComputeLossAF(model, hyp)
    assert plain.options == {'cls_norm': 'score_sum', 'targets': 'quality', 'assigner': 'tal'}
    assert plain.assigner.alpha == 0.5
    model.arch['loss_af'] = {'cls_norm': 'score_sum', 'targets': 'quality', 'assigner': 'tal'}
    assert torch.equal(ComputeLossAF(model, hyp)(raw, t)[1], plain(raw, t)[1])


def test_cls_norm_targets_divides_by_positives_times_80():
    model, x, t = _with_switches(None)
    raw, hyp = model(x), scaled_gains_af(default_hyp())
    ours = ComputeLossAF(model, hyp)
    seen = _recording(ours)
    items = ours(raw, t)[1]
    model.arch['loss_af'] = {'cls_norm': 'targets'}
    items5 = ComputeLossAF(model, hyp)(raw, t)[1]
    a = seen[0]
    n_fg, total = int(a.fg.sum()), float(a.scores.sum().clamp(min=1))
    assert n_fg > 0 and total < n_fg  # quality scores sum below the number of positives
    assert torch.equal(items5[:2], items[:2])  # box and DFL as they were
    assert abs(float(items5[2]) * n_fg * 80 - float(items[2]) * total) < 1e-4 * float(items[2]) * total


def test_binary_targets_are_one_on_the_assigned_class():
    model, x, t = _with_switches({'targets': 'binary'})
    raw, hyp = model(x), scaled_gains_af(default_hyp())
    loss_fn = ComputeLossAF(model, hyp)
    seen = _recording(loss_fn)
    items = loss_fn(raw, t)[1]
    a = seen[0]
    logits = torch.cat([r.detach().reshape(2, -1, r.shape[-1])[..., -3:] for r in raw], 1)
    onehot = torch.nn.functional.one_hot(a.labels, 3).float() * a.fg[..., None]
    assert int(onehot.sum()) == int(a.fg.sum()) > 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction='sum')
    want = hyp['cls'] * float(bce) / float(a.scores.sum().clamp(min=1))  # S stays the quality scores' sum
    assert abs(float(items[2]) - want) < 1e-4 * want


def test_iou_assigner_ignores_the_class_scores():
    model, _, _ = _with_switches({'assigner': 'iou'})
    assert ComputeLossAF(model, scaled_gains_af(default_hyp())).assigner.alpha == 0.0
    scores, boxes, labels, gts, mask = hand_case()
    low, high = scores.clone(), scores.clone()
    high[0, idx(12, 20), 1] = 0.99
    for alpha, same in ((0.0, True), (0.5, False)):
        a, b = (TaskAlignedAssigner(nc=2, topk=4, alpha=alpha)(s, boxes, POINTS, labels, gts, mask) for s in (low, high))
        assert torch.equal(a.scores, b.scores) == same


@pytest.mark.parametrize('bad, words', [({'cls_norm': 'mean'}, "loss_af.cls_norm: 'mean' is not one of"),
                                        ({'assign': 'iou'}, 'loss_af.assign: unknown'),
                                        ('iou', 'want a mapping')])
def test_bad_loss_switch_is_a_clear_error(bad, words):
    model, _, _ = _with_switches(bad)
    with pytest.raises(ValueError, match=words):
        ComputeLossAF(model, scaled_gains_af(default_hyp()))
