"""bench.fidelity_diff, the comparison logic of the YOLOv5 fidelity harness (no peer venv needed): hand-computed
differences, a shape mismatch never "same", and one moved positive or one extra optimizer step caught."""
from __future__ import annotations

import math

import torch

from bench.fidelity_diff import FLOAT_NOISE, Row, assignment_rows, dict_diff, tensor_diff, trace_rows


def test_tensor_diff_is_max_abs_and_relative_norm_in_float64():
    a, r = tensor_diff(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
    assert a == 2.0
    assert math.isclose(r, 2.0 / math.sqrt(30.0), rel_tol=1e-12)
    assert tensor_diff(torch.ones(3), torch.ones(3)) == (0.0, 0.0)


def test_a_shape_mismatch_or_a_missing_key_is_never_the_same():
    a, r = tensor_diff(torch.ones(3), torch.ones(4))
    assert math.isnan(a) and math.isnan(r)
    assert not Row("x", "y", "3", a, r).same
    assert Row("x", "y", "3", 0.0, FLOAT_NOISE / 2).same and not Row("x", "y", "3", 0.0, FLOAT_NOISE * 2).same
    assert Row("x", "y", "3", 1.0, 1.0).verdict() == "**differs**"  # flagged unless a documented reason is given
    assert Row("x", "y", "3", 1.0, 1.0, why="docs").verdict() == "differs, on purpose"
    _, rel, key = dict_diff({"w": torch.ones(2), "b": torch.ones(1)}, {"w": torch.ones(2)})
    assert math.isnan(rel) and key == "b"


def test_dict_diff_names_the_worst_entry():
    ours = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([10.0])}
    peer = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([10.5])}
    a, r, key = dict_diff(ours, peer)
    assert (a, key) == (1.0, "w")  # |1 - 2| / sqrt(5) = 0.447 > 0.5 / 10.5
    assert math.isclose(r, 1 / math.sqrt(5), rel_tol=1e-12)


def level(cells: list[tuple[int, int, int, int, int]]) -> dict:
    t = torch.tensor(cells)
    return {"b": t[:, 0], "a": t[:, 1], "gj": t[:, 2], "gi": t[:, 3], "tcls": t[:, 4],
            "tbox": torch.rand(len(cells), 4, generator=torch.Generator().manual_seed(0)),
            "anch": torch.ones(len(cells), 2)}


def test_assignment_rows_catch_one_positive_in_another_cell():
    peer = [level([(0, 0, 3, 4, 1), (0, 1, 3, 5, 1)])]
    same = assignment_rows(peer, peer)
    assert all(row.same for row in same) and same[0].max_abs == 0.0
    moved = [level([(0, 0, 3, 4, 1), (0, 1, 4, 5, 1)])]
    rows = assignment_rows(moved, peer)
    assert not rows[0].same and rows[0].max_abs == 1.0
    fewer = assignment_rows([level([(0, 0, 3, 4, 1)])], peer)
    assert not fewer[0].same and len(fewer) == 1  # counts differ: no box rows to pair up


def test_trace_rows_catch_one_extra_optimizer_step():
    peer = {"lr": torch.tensor([0.0, 0.5, 1.0]), "step": torch.tensor([1.0, 0.0, 1.0])}
    ours = {"lr": torch.tensor([0.0, 0.5, 1.0]), "step": torch.tensor([1.0, 1.0, 1.0])}
    rows = trace_rows("s", ours, peer, ("lr", "step"))
    assert [row.same for row in rows] == [True, False, False]
    assert rows[-1].size == "3 ours / 2 peer"
