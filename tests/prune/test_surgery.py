"""Channel surgery is exact: compact model == full-size model with pruned channels zeroed (after
compensation), and the compensation reproduces the gamma-zeroed original up to border padding."""
import copy

import pytest
import torch
import torch.nn.functional as F

from core.checkpoint import model_from_checkpoint, save_checkpoint
from prune.graph import trace
from prune.masks import MaskOptions, compute_masks
from prune.surgery import absorb_constants, input_mask, prune_channels, pruned_constants, zero_pruned
from tests.helpers import max_diff, random_model, raw_maps, replicate_padding


@pytest.mark.parametrize("yaml_name,imgsz", [("yolov5n.yaml", 96), ("yolov5-cpu.yaml", 64),
                                             ("mobilenetv2-cpu.yaml", 64), ("yolov5-cpu-af.yaml", 64),
                                             ("yolov5n-af.yaml", 96)])
def test_surgery_exact(yaml_name, imgsz):
    model = random_model(yaml_name)
    graph = trace(model)
    masks, _ = compute_masks(graph, MaskOptions(global_percent=0.4))
    n_pruned = sum(int((~masks[n]).sum()) for n in graph.convs)
    assert n_pruned > 0.25 * sum(m.numel() for m in masks.values())  # coupled groups keep a union

    compact = prune_channels(model, masks).eval()
    assert sum(p.numel() for p in compact.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())
    for name, m in trace(compact).convs.items():
        assert m.conv.out_channels == int(masks[name].sum()), name

    # (a) compensated + pruned gammas and betas zeroed == compact model (float32, as trained)
    full = copy.deepcopy(model)
    g_full = trace(full)
    assert absorb_constants(g_full, pruned_constants(g_full, masks)) > 10
    zero_pruned(g_full, masks, betas=True)
    x = torch.rand(2, 3, imgsz, imgsz)
    # Relative to the outputs' scale (~12 here): the two models sum the same terms in a different order
    # through ~60 layers, so float32 rounding differs by CPU kernel (1.1e-4 absolute on an AVX2 host,
    # under 1e-4 on AVX-512). 5e-5 of the scale (~400 ulps) still fails a wrong compensation by 100x;
    # the exact claim is checked in float64 below.
    compact_maps, full_maps = raw_maps(compact, x), raw_maps(full, x)
    scale = max(float(m.abs().max()) for m in full_maps)
    assert max_diff(compact_maps, full_maps) <= 5e-5 * scale

    # (b) in float64 (float32 rounding of activations ~20 is ~1e-4): the original with only the
    # pruned gammas zeroed equals the compensated model except where zero padding meets a constant
    model, x = model.double(), x.double()
    full = copy.deepcopy(model)
    g_full = trace(full)
    absorb_constants(g_full, pruned_constants(g_full, masks))
    zero_pruned(g_full, masks, betas=True)
    assert max_diff(raw_maps(prune_channels(model, masks).eval(), x), raw_maps(full, x)) <= 1e-9
    original = copy.deepcopy(model)
    zero_pruned(trace(original), masks, betas=False)
    assert max_diff(raw_maps(original, x), raw_maps(full, x)) > 1e-3  # zero-padded borders differ
    # pad by edge replication instead: constants stay constant at the borders, the maps match everywhere
    # (the zero-padded interior is compared at full size in the next test)
    replicate_padding(original), replicate_padding(full)
    assert max_diff(raw_maps(original, x), raw_maps(full, x)) <= 1e-9


def border_reach(model, imgsz: int) -> list[torch.Tensor]:
    """Per output level, a (ny, nx) bool map: True where the cell's receptive field contains a zero-padded
    position of any conv. Computed independently of the pruning code, by running the model's own layer
    graph on 0/1 "touched by padding" maps: each conv pads with 1 and dilates by its kernel and stride;
    BN and SiLU become identities; max-pool, upsample, concat and add carry the maps through."""
    net = copy.deepcopy(model).float().train()
    for parent in list(net.modules()):
        for cname, child in list(parent.named_children()):
            if isinstance(child, (torch.nn.BatchNorm2d, torch.nn.SiLU)):
                setattr(parent, cname, torch.nn.Identity())

    def touched(m, inp, out):
        x = (inp[0].amax(1, keepdim=True) > 0).to(out.dtype)
        ph, pw = m.padding
        x = F.pad(x, (pw, pw, ph, ph), value=1.0)
        return F.max_pool2d(x, m.kernel_size, m.stride).repeat(1, m.out_channels, 1, 1)

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(touched)
    with torch.no_grad():
        return [o[0].amax((0, -1)) > 0 for o in net(torch.zeros(1, 3, imgsz, imgsz))]


@pytest.mark.parametrize("yaml_name,imgsz", [("yolov5n.yaml", 1024), ("yolov5-cpu.yaml", 1024),
                                             ("mobilenetv2-cpu.yaml", 1024), ("yolov5-cpu-af.yaml", 1280)])
def test_compensation_exact_in_the_interior_with_zero_padding(yaml_name, imgsz):
    """(b) as stated: the original model with only the pruned gammas zeroed equals the compensated,
    compact model wherever no zero padding reaches; 1024 px is the smallest size with interior cells
    on every output level (the receptive field reaches ~360 px in from each border); the anchor-free head's
    two 3x3 convs per branch reach ~500 px, so it needs 1280."""
    model = random_model(yaml_name, seed=2).double()
    graph = trace(model)
    masks, _ = compute_masks(graph, MaskOptions(global_percent=0.4))
    compact = prune_channels(model, masks).eval()
    original = copy.deepcopy(model)
    zero_pruned(trace(original), masks, betas=False)
    x = torch.rand(1, 3, imgsz, imgsz, dtype=torch.float64)
    reach = border_reach(model, imgsz)
    for level, (r, a, b) in enumerate(zip(reach, raw_maps(original, x), raw_maps(compact, x))):
        diff = (a - b).abs()[0].amax((0, -1))  # (ny, nx): worst anchor and output
        assert diff.shape == r.shape
        assert int((~r).sum()) >= 25, f"level {level}: no interior at {imgsz} px"
        assert float(diff[~r].max()) <= 1e-9, f"level {level}: interior differs by {float(diff[~r].max())}"
        assert float(diff[r].max()) > 1e-3, f"level {level}: border does not differ (zero padding not exercised)"


def test_without_compensation_outputs_change():
    """Control: skipping the beta compensation breaks (a), so the test above can fail."""
    model = random_model("yolov5-cpu.yaml", seed=1)
    graph = trace(model)
    masks, _ = compute_masks(graph, MaskOptions(global_percent=0.3))
    full = copy.deepcopy(model)
    zero_pruned(trace(full), masks, betas=True)
    original = copy.deepcopy(model)
    zero_pruned(trace(original), masks, betas=False)
    x = torch.rand(1, 3, 64, 64)
    replicate_padding(original), replicate_padding(full)
    assert max_diff(raw_maps(original, x), raw_maps(full, x)) > 1e-2


def test_coupled_masks_identical_at_shortcuts():
    model = random_model("yolov5-cpu.yaml")
    graph = trace(model)
    masks, _ = compute_masks(graph, MaskOptions(global_percent=0.5))
    groups = {tuple(g) for g in graph.groups() if len(g) > 1}
    # C3 at layer 4 has 2 shortcut blocks: cv1 and both cv2 outputs are summed
    assert ("model.4.cv1", "model.4.m.0.cv2", "model.4.m.1.cv2") in groups
    assert not any("model.13" in n for g in groups for n in g)  # head C3s have no shortcut
    for g in groups:
        assert all(torch.equal(masks[g[0]], masks[n]) for n in g)
    # cv3 of a C3 reads [stream, cv2] concatenated; SPPF's cv2 reads cv1 four times
    cv3 = next(c for c in graph.consumers if c.name == "model.4.cv3")
    assert torch.equal(input_mask(graph, cv3.inputs, masks),
                       torch.cat([masks["model.4.cv1"], masks["model.4.cv2"]]))
    sppf = next(c for c in graph.consumers if c.name == "model.9.cv2")
    assert torch.equal(input_mask(graph, sppf.inputs, masks), masks["model.9.cv1"].repeat(4))
    detect = [c for c in graph.consumers if c.bn is None]
    assert [c.name for c in detect] == ["model.24.m.0", "model.24.m.1", "model.24.m.2"]


def test_pruned_checkpoint_reloads_weights_only(tmp_path):
    model = random_model("yolov5-cpu.yaml")
    masks, _ = compute_masks(trace(model), MaskOptions(global_percent=0.3, round_to=8))
    compact = prune_channels(model, masks).eval()
    assert all(m.conv.out_channels % 8 == 0 or m.conv.out_channels == masks[n].numel()
               for n, m in trace(compact).convs.items())
    path = save_checkpoint(tmp_path / "pruned.pt", compact, hyp={}, metrics={}, epoch=0)
    raw = torch.load(path, weights_only=True)
    assert raw["arch"]["channels"]["model.4.cv1"] == int(masks["model.4.cv1"].sum())
    loaded = model_from_checkpoint(path)
    x = torch.rand(1, 3, 64, 64)
    assert max_diff(raw_maps(loaded, x), raw_maps(compact, x)) == 0.0
