"""Layer pruning: removal builds, loads, runs; exact when the removed branches' gammas are zero."""
import copy

import pytest
import torch

from core.checkpoint import model_from_checkpoint, save_checkpoint
from prune.graph import trace
from prune.layers import LayerPruneError, rank_shortcuts, remove_shortcuts
from prune.masks import MaskOptions, compute_masks
from prune.surgery import prune_channels
from tests.helpers import max_diff, random_model, raw_maps, replicate_padding


def test_remove_lowest_blocks_exact_when_branch_is_constant(tmp_path):
    model = random_model("yolov5-cpu.yaml").double()
    blocks = [n for n, _ in rank_shortcuts(model)]
    assert sorted(blocks) == ["model.2.m.0", "model.4.m.0", "model.4.m.1", "model.6.m.0", "model.6.m.1",
                              "model.6.m.2", "model.8.m.0"]  # backbone C3s 3, 6, 9, 3 x depth 0.33
    mods = dict(model.named_modules())
    for name in ("model.4.m.0", "model.2.m.0"):  # zero their residual branch: output is act(beta)
        mods[name + ".cv2"].bn.weight.data.zero_()
    pruned, removed = remove_shortcuts(model, 2)
    assert sorted(n for n, _ in removed) == ["model.2.m.0", "model.4.m.0"]
    assert pruned.arch["repeats"] == {"model.2": 0, "model.4": 1}
    assert len(pruned.model[4].m) == 1 and len(pruned.model[2].m) == 0
    # the surviving block of layer 4 moved from m.1 to m.0 with its weights
    assert torch.equal(pruned.state_dict()["model.4.m.0.cv1.conv.weight"],
                       model.state_dict()["model.4.m.1.cv1.conv.weight"])
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    # with replicate padding a constant branch is constant at the borders too: removal is exact
    ref, new = replicate_padding(copy.deepcopy(model)), replicate_padding(copy.deepcopy(pruned))
    assert max_diff(raw_maps(new, x), raw_maps(ref, x)) <= 1e-9
    # control: removing blocks whose branch is not constant changes the outputs
    other, _ = remove_shortcuts(random_model("yolov5-cpu.yaml"), 1)
    assert max_diff(raw_maps(replicate_padding(other).double(), x), raw_maps(ref, x)) > 1e-3

    path = save_checkpoint(tmp_path / "layers.pt", pruned, hyp={}, metrics={}, epoch=0)
    loaded = model_from_checkpoint(path)
    assert max_diff(raw_maps(loaded, x.float()), raw_maps(pruned.float(), x.float())) == 0.0


def test_channel_then_layer_prune_runs():
    model = random_model("yolov5n.yaml")
    masks, _ = compute_masks(trace(model), MaskOptions(global_percent=0.3))
    compact = prune_channels(model, masks)
    n = len(rank_shortcuts(compact))
    pruned, removed = remove_shortcuts(compact, 3)
    assert len(removed) == 3 and len(rank_shortcuts(pruned)) == n - 3
    # channel overrides of shifted blocks follow their blocks
    for name, m in trace(pruned).convs.items():
        assert pruned.arch["channels"][name] == m.conv.out_channels, name
    out = pruned.train()(torch.rand(2, 3, 64, 64))
    assert [o.shape[2] for o in out] == [8, 4, 2]


def test_too_many_blocks_is_a_clear_error():
    model = random_model("yolov5-cpu.yaml")
    with pytest.raises(LayerPruneError, match=r"--shortcuts 9: the model has 7 shortcut Bottlenecks.*choose 0\.\.7"):
        remove_shortcuts(model, 9)
