"""--round-to auto reads the machine: AVX-512 -> 16, AVX2 -> 8, CUDA -> 8."""
import pytest
import torch

from prune import rounding


@pytest.mark.parametrize("cap,want", [("AVX512", 16), ("AVX2", 8)])
def test_cpu_capability(monkeypatch, cap, want):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: cap)
    n, why = rounding.auto_round_to("cpu")
    assert n == want and cap in why and str(want) in why


def test_cuda_and_explicit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert rounding.auto_round_to("0")[0] == 8
    assert rounding.resolve_round_to(4, "cpu") == (4, "given")
    assert rounding.resolve_round_to("auto", "cpu")[0] in (4, 8, 16)
