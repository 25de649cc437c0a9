"""The coupling graph beyond the plain YOLOv5 layout: depthwise convs, grouped convs, other input channels."""
import copy

import pytest
import torch

from core.model.yolo import Model
from prune.graph import GraphError, trace
from prune.masks import MaskOptions, compute_masks
from prune.surgery import absorb_constants, prune_channels, pruned_constants, zero_pruned
from tests.helpers import max_diff, random_model, raw_maps

GROUPED = {"nc": 2, "anchors": [[10, 13, 16, 30, 33, 23]],
           "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2, None, 4]]],  # groups=4
           "head": [[[1], 1, "Detect", ["nc", "anchors"]]]}


def test_depthwise_keeps_its_producers_channels():
    model = random_model("mobilenetv2-cpu.yaml")
    graph = trace(model)
    masks, _ = compute_masks(graph, MaskOptions(global_percent=0.5, round_to=4))
    for dw, producer in (("model.1", "model.0"), ("model.4", "model.3"), ("model.13", "model.12")):
        assert graph.root(dw) == graph.root(producer)
        assert torch.equal(masks[dw], masks[producer])
    compact = prune_channels(model, masks)
    dws = ("model.1", "model.4", "model.7", "model.10", "model.13")
    for dw in dws:
        conv = compact.get_submodule(dw).conv
        assert conv.groups == conv.in_channels == conv.out_channels == int(masks[dw].sum()), dw
    assert sum(int((~masks[dw]).sum()) for dw in dws) > 0.1 * sum(masks[dw].numel() for dw in dws)


def test_depthwise_masked_equals_compact_float32():
    """The acceptance bound of the issue: masked (compensated, pruned channels zeroed) vs compact in float32."""
    model = random_model("mobilenetv2-cpu.yaml", seed=3)
    masks, _ = compute_masks(trace(model), MaskOptions(global_percent=0.4))
    full = copy.deepcopy(model)
    g = trace(full)
    absorb_constants(g, pruned_constants(g, masks))
    zero_pruned(g, masks)
    x = torch.rand(2, 3, 64, 64)
    assert max_diff(raw_maps(prune_channels(model, masks).eval(), x), raw_maps(full, x)) <= 1e-4


def test_grouped_conv_is_refused_by_name():
    with pytest.raises(GraphError, match=r"model\.1: grouped conv \(groups=4"):
        trace(Model(copy.deepcopy(GROUPED)))


@pytest.mark.parametrize("ch", [1, 4])
def test_other_input_channels(ch):
    """The tracer takes the image channels from the model (a 1- or 4-channel input used to crash)."""
    model = random_model("yolov5-cpu.yaml", ch=ch)
    graph = trace(model)
    assert graph.in_channels == ch
    masks, _ = compute_masks(graph, MaskOptions(global_percent=0.4))
    compact = prune_channels(model, masks).eval()
    assert compact.model[0].conv.in_channels == ch
    assert compact(torch.rand(1, ch, 64, 64))[0].shape[0] == 1
