"""Fixtures shared by the pruning tests."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import random_model


@pytest.fixture(scope="module")
def model():
    """A random yolov5-cpu (tests.helpers.random_model) with torch on one thread while the module runs: each
    pruned candidate is a small model, and a second thread only spins on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield random_model("yolov5-cpu.yaml")
    torch.set_num_threads(before)
