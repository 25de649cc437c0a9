"""The coupling graph beyond the plain YOLOv5 layout: depthwise convs, grouped convs, other input channels."""
import copy

import pytest
import torch

from core.model.yolo import Model
from prune.graph import GraphError, trace
from prune.layers import rank_shortcuts, remove_shortcuts
from prune.masks import MaskOptions, compute_masks
from prune.surgery import absorb_constants, prune_channels, pruned_constants, zero_pruned
from tests.helpers import max_diff, random_model, raw_maps, replicate_padding

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


def test_anchor_free_head_convs_prunable_outputs_kept():
    """DetectAF: per level and branch, Conv -> Conv -> output Conv2d. Both Convs are prunable and coupled to
    nothing (each reads only the level's input or its sibling); the output convs are consumers that keep
    every output (4 x reg_max box logits, nc class logits)."""
    model = random_model("yolov5-cpu-af.yaml")
    graph = trace(model)
    head = [n for n in graph.convs if n.startswith("model.24.")]
    assert head == [f"model.24.{k}.{i}.{j}" for i in range(3) for k in ("box", "cls") for j in (0, 1)]
    groups = {n: g for g in graph.groups() for n in g}
    assert all(groups[n] == [n] for n in head)
    inputs = {c.name: c.inputs for c in graph.consumers}
    assert inputs["model.24.box.0.0"] == inputs["model.24.cls.0.0"] == [("model.17.cv3",)]
    assert inputs["model.24.cls.2.1"] == [("model.24.cls.2.0",)]
    outputs = [c for c in graph.consumers if c.bn is None]
    assert [c.name for c in outputs] == [f"model.24.{k}.{i}.2" for i in range(3) for k in ("box", "cls")]
    assert all(c.name not in graph.convs for c in outputs)

    masks, _ = compute_masks(graph, MaskOptions(global_percent=0.5))
    compact = prune_channels(model, masks).eval()
    det = compact.model[-1]
    cut = sum(int((~masks[n]).sum()) for n in head)
    assert cut > 0.2 * sum(masks[n].numel() for n in head)  # the head's convs do lose channels
    assert [b[2].out_channels for b in det.box] == [64] * 3 and [c[2].out_channels for c in det.cls] == [3] * 3
    assert [b[2].in_channels for b in det.box] == [int(masks[f"model.24.box.{i}.1"].sum()) for i in range(3)]
    x = torch.rand(1, 3, 64, 64)
    assert compact(x)[0].shape == model(x)[0].shape


def test_anchor_free_layer_pruning_exact_when_branch_is_constant():
    """Layer pruning is unaffected by the head: removing shortcut blocks whose branch is a constant is exact
    (with replicate padding, so the constant stays constant at the borders)."""
    model = random_model("yolov5-cpu-af.yaml").double()
    masks, _ = compute_masks(trace(model), MaskOptions(global_percent=0.3))
    compact = prune_channels(model, masks)
    mods = dict(compact.named_modules())
    for name in ("model.4.m.0", "model.6.m.1"):
        mods[name + ".cv2"].bn.weight.data.zero_()
    assert sorted(n for n, score in rank_shortcuts(compact) if score == 0) == ["model.4.m.0", "model.6.m.1"]
    pruned, removed = remove_shortcuts(compact, 2)
    assert sorted(n for n, _ in removed) == ["model.4.m.0", "model.6.m.1"]
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    ref, new = replicate_padding(copy.deepcopy(compact)), replicate_padding(copy.deepcopy(pruned))
    assert max_diff(raw_maps(new, x), raw_maps(ref, x)) <= 1e-9
    other, _ = remove_shortcuts(random_model("yolov5-cpu-af.yaml").double(), 1)  # control: a live branch differs
    assert max_diff(raw_maps(replicate_padding(other), x), raw_maps(replicate_padding(model), x)) > 1e-3
