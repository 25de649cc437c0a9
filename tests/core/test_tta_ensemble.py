"""Test-time augmentation puts boxes back on their pixels; an ensemble merges predictions before NMS."""
from pathlib import Path

import torch
from torch import nn

from core.ensemble import Ensemble
from core.model.yolo import Model
from core.nms import non_max_suppression
from core.tta import TTA, descale, level_mask, scale_image
from tests.helpers import MODEL as HELPER_MODEL
from tests.helpers import constant_af_model

MODEL = Path(HELPER_MODEL)


def test_descale_hand_case():
    # A 100 px wide image, flipped left-right, then resized to 83 x 41 px (gain 0.83 x 0.82):
    # a box centred at x=20 lands at (100 - 20) * 0.83 = 66.4 in the flipped, resized image.
    pred = torch.tensor([[[66.4, 0.82 * 30, 0.83 * 10, 0.82 * 8, 0.9, 0.8]]])
    back = descale(pred, (0.83, 0.82), flip_width=100)
    assert torch.allclose(back[0, 0, :4], torch.tensor([20.0, 30.0, 10.0, 8.0]), atol=1e-4)
    assert torch.equal(back[..., 4:], pred[..., 4:])  # scores untouched
    assert pred[0, 0, 0] == 66.4  # input not modified
    assert torch.allclose(descale(pred, (0.83, 0.82))[0, 0, 0], torch.tensor(80.0))  # no flip: stays mirrored


class BrightBoxFinder(nn.Module):
    """Stub detector: 'predicts' the bounding box of pixels brighter than 0.5 in every row of a Detect-shaped
    output (1 anchor, strides 8/16/32), with a per-level id in the last column."""

    def __init__(self):
        super().__init__()
        self.register_buffer("stride", torch.tensor([8.0, 16.0, 32.0]))
        self.names, self.nc = ["box"], 1
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        h, w = x.shape[2:]
        ys, xs = torch.nonzero(x[0, 0] > 0.5, as_tuple=True)
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1  # pixel edges
        box = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]).float()
        rows = []
        for level, s in enumerate(self.stride.tolist()):
            n = int(h // s) * int(w // s)
            rows.append(torch.cat([box, torch.tensor([1.0, float(level)])]).expand(n, 6))
        return torch.cat(rows)[None], None


def test_tta_puts_a_box_back_on_its_pixels():
    img = torch.zeros(1, 3, 96, 128)
    img[..., 30:50, 20:60] = 1.0  # off-centre, so an un-undone flip would show
    stub = BrightBoxFinder()
    pred, _ = TTA(stub)(img)
    assert stub.seen == [(96, 128), (96, 128), (96, 96)]  # 79x106 and 64x85 pixels, padded to multiples of 32
    want = torch.tensor([40.0, 40.0, 40.0, 20.0])  # cx, cy, w, h of the bright block
    assert (pred[0, :, :4] - want).abs().max() < 1.3  # within the resize's pixel rounding (1 px / 0.67)
    # Level dropping: the full-scale pass loses its stride-32 rows, the smallest pass its stride-8 rows.
    cells = [12 * 16, 6 * 8, 3 * 4], [12 * 12, 6 * 6, 3 * 3]
    n_full, n_mid, n_small = sum(cells[0][:2]), sum(cells[0]), sum(cells[1][1:])
    assert pred.shape[1] == n_full + n_mid + n_small
    levels = pred[0, :, 5]
    assert (levels[:n_full] < 2).all() and (levels[-n_small:] > 0).all()


def test_level_mask_counts():
    keep = level_mask(3 * (64 + 16 + 4), (64, 64), torch.tensor([8.0, 16.0, 32.0]), drop=1)
    assert int(keep.sum()) == 3 * (64 + 4) and not keep[3 * 64:3 * 80].any()


def test_scale_image_pads_to_stride():
    x = torch.rand(2, 3, 100, 70)
    y, gain = scale_image(x, 0.67, 32)
    assert y.shape == (2, 3, 96, 64) and gain == (46 / 70, 67 / 100)
    assert torch.all(y[..., 67:, :] == 0.447) and torch.all(y[..., 46:] == 0.447)


def _model(seed):
    torch.manual_seed(seed)
    m = Model(str(MODEL), nc=3).eval()
    for conv in m.model[-1].m:  # objectness near 0.5: plenty of boxes
        conv.bias.data.view(m.na, -1)[:, 4] = 0.0
    return m


@torch.no_grad()
def test_ensemble_of_one_equals_the_model_and_merges_before_nms():
    a, b = _model(0), _model(1)
    x = torch.rand(2, 3, 64, 64)
    single = a(x)[0]
    assert torch.equal(Ensemble([a])(x)[0], single)
    pair = Ensemble([a, b])(x)[0]
    assert torch.equal(pair, torch.cat([single, b(x)[0]], 1))  # more boxes per image, same images
    # Two identical members: every box is duplicated with the same score, so NMS leaves the single model's set.
    twice = non_max_suppression(Ensemble([a, a])(x)[0], 0.01, 0.45)
    for got, want in zip(twice, non_max_suppression(single, 0.01, 0.45)):
        assert len(want) > 0 and torch.equal(got, want)


@torch.no_grad()
def test_tta_and_ensemble_with_the_anchor_free_head():
    """A head whose every cell predicts a box of 6 x 8 strides: through TTA each pass's boxes come back divided
    by its resize gain, and the levels dropped are the right ones (one row per cell: na = 1); an anchor-free and
    an anchor-based model ensemble into one NMS."""
    af = constant_af_model(nc=3, sides=(2, 3, 4, 5), scores=(0.2, 0.6, 0.3))
    x = torch.rand(1, 3, 96, 128)
    pred, _ = TTA(af)(x)
    cells = [12 * 16, 6 * 8, 3 * 4], [12 * 12, 6 * 6, 3 * 3]  # 96 x 128 (full and 0.83, padded) and 96 x 96
    assert pred.shape == (1, sum(cells[0][:2]) + sum(cells[0]) + sum(cells[1][1:]), 5 + 3)
    widths = sorted({round(float(w), 1) for w in pred[0, :, 2]})
    gains = [1.0, int(128 * 0.83) / 128, int(128 * 0.67) / 128]
    want = sorted({round(6 * s / g, 1) for g, levels in zip(gains, ((8, 16), (8, 16, 32), (16, 32))) for s in levels})
    assert widths == want  # no 6 x 32 px box from the full pass, no 6 x 8 px one from the smallest
    assert torch.equal(pred[0, :, 4], torch.ones(len(pred[0]))) and torch.allclose(pred[0, :, 6], torch.tensor(0.6))

    based = _model(0)
    both = Ensemble([af, based])(x[..., :96, :96])[0]
    assert both.shape == (1, (144 + 36 + 9) + 3 * (144 + 36 + 9), 8)  # one row per cell, three anchors per cell
    twice = non_max_suppression(Ensemble([af, af])(x)[0], 0.01, 0.45)
    single = non_max_suppression(af(x)[0], 0.01, 0.45)
    assert len(single[0]) > 0 and torch.equal(twice[0], single[0])
