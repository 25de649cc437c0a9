"""bench/torch_pruning.py's own logic, without torch_pruning (it lives in .venv-tp only): the GFLOPs-matching
bisection and the rebuild of an in-place-pruned model as a plain Model."""
from __future__ import annotations

import copy

import pytest
import torch

from bench.torch_pruning import TPBenchError, as_core_model, match_gflops
from core.model.yolo import Model
from prune.graph import trace
from prune.masks import MaskOptions, compute_masks
from prune.surgery import prune_channels
from tests.helpers import MODELS


def test_match_gflops_bisects_to_the_target():
    calls = []

    def prune_at(r):
        calls.append(r)
        return r

    model, match = match_gflops(prune_at, lambda r: 2.0 * (1.0 - r) ** 2, target=0.5, tol=0.01)
    assert abs(2.0 * (1.0 - model) ** 2 / 0.5 - 1) <= 0.01  # ratio 0.5 gives exactly 0.5
    assert abs(match.error) <= 0.01 and match.ratio == model
    assert len(calls) == len(match.trials) <= 17 and calls[0] == 0.95


def test_match_gflops_returns_the_closest_step_when_none_is_within_tolerance():
    def steps(r):  # GFLOPs 1, 0.75, 0.5, 0.25: none near 0.7
        return 1.0 - 0.25 * int(r / 0.25)

    _, match = match_gflops(lambda r: r, steps, target=0.7, tol=0.01, max_iter=10)
    assert match.gflops == 0.75 and match.error == pytest.approx(0.75 / 0.7 - 1)  # +7%, not 0.5's -29%
    assert len(match.trials) == 11 and match.trials[-1][1] == 0.5  # the last trial is not the answer


def test_match_gflops_refuses_an_unreachable_target():
    with pytest.raises(TPBenchError, match="prune less"):
        match_gflops(lambda r: r, lambda r: 1.0 - 0.5 * r, target=0.2, tol=0.01)


def test_in_place_pruned_model_rebuilds_from_its_widths():
    torch.manual_seed(0)
    model = Model(str(MODELS / "yolov5-cpu.yaml"), nc=3).eval()
    for m in model.modules():  # spread gammas so the masks differ per layer
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 1.0)
    masks, _ = compute_masks(trace(model), MaskOptions(0.4, 0.01, 1))
    compact = prune_channels(model, masks)
    stale = copy.deepcopy(compact)
    stale.arch = copy.deepcopy(model.arch)  # what Torch-Pruning leaves: cut modules, the unpruned arch
    with pytest.raises(RuntimeError):  # control: the stale arch cannot hold the weights
        Model(stale.arch).load_state_dict(stale.state_dict())

    rebuilt = as_core_model(stale)
    widths = {n: int(k.sum()) for n, k in masks.items()}
    assert rebuilt.arch["channels"] == widths and sum(widths.values()) < sum(k.numel() for k in masks.values())
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(rebuilt(x)[0], compact(x)[0])
    again = Model(copy.deepcopy(rebuilt.arch))  # the arch alone (what a checkpoint stores) holds the weights
    again.load_state_dict(rebuilt.state_dict())
