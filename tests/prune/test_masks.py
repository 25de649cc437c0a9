"""Global threshold, per-layer floor, rounding and option errors."""
import math

import pytest
import torch

from core.model.yolo import Model
from prune.graph import trace
from prune.masks import MaskOptions, PruneOptionError, compute_masks, threshold
from tests.helpers import MODELS


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    model = Model(str(MODELS / "yolov5-cpu.yaml"), nc=3)
    for i, (name, m) in enumerate(trace(model).convs.items()):
        m.bn.weight.data = torch.linspace(0.01, 1.0, m.bn.num_features) * (i + 1)  # layer i: scale i+1
    return trace(model)


def test_threshold_is_global_quantile(graph):
    flat = torch.sort(torch.cat([m.bn.weight.detach().abs() for m in graph.convs.values()])).values
    t = threshold(graph, 0.25)
    assert t.value == pytest.approx(float(flat[int(0.25 * flat.numel())]))
    # the tightest group is the one with the smallest max |gamma|: model.0 (scale 1, max 1.0)
    assert t.tightest == "model.0" and t.safe_value == pytest.approx(1.0)
    assert t.safe_percent == pytest.approx(float((flat < 1.0).float().mean()))


def test_layer_keep_floor_and_round_to(graph):
    masks, t = compute_masks(graph, MaskOptions(global_percent=0.9, layer_keep=0.25, round_to=1))
    assert t.value > t.safe_value  # without the floor some layers would be emptied
    for name, m in graph.convs.items():
        c = m.bn.num_features
        assert int(masks[name].sum()) >= max(1, math.ceil(c * 0.25)), name
    masks8, _ = compute_masks(graph, MaskOptions(global_percent=0.5, layer_keep=0.01, round_to=8))
    for name, keep in masks8.items():
        k = int(keep.sum())
        assert k % 8 == 0 or k == keep.numel(), (name, k)


def test_kept_channels_are_the_largest_gammas(graph):
    masks, t = compute_masks(graph, MaskOptions(global_percent=0.3))
    name = "model.21"  # not coupled, large gammas: kept == |gamma| >= threshold
    g = graph.convs[name].bn.weight.detach().abs()
    assert 0 < int(masks[name].sum()) < masks[name].numel()
    assert torch.equal(masks[name], g >= t.value)


@pytest.mark.parametrize("percent", [-0.1, 1.0, 1.5])
def test_percent_out_of_range(graph, percent):
    with pytest.raises(PruneOptionError, match=r"--global-percent .* outside \[0, 1\)"):
        compute_masks(graph, MaskOptions(global_percent=percent))


def test_percent_that_empties_a_layer_names_it(graph):
    t = threshold(graph, 0.95)
    with pytest.raises(PruneOptionError) as e:
        compute_masks(graph, MaskOptions(global_percent=0.95, layer_keep=0.0))
    msg = str(e.value)
    assert "model.0" in msg and f"{t.safe_percent:.3f}" in msg
    # just under the safe maximum works and keeps every layer
    masks, _ = compute_masks(graph, MaskOptions(global_percent=t.safe_percent - 1e-3, layer_keep=0.0))
    assert all(int(k.sum()) >= 1 for k in masks.values())
