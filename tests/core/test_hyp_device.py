import pytest
import torch

from core.device import DeviceError, DistContext, parse_device_ids, select_device
from core.hyp import HYP_KEYS, HypError, default_hyp, load_hyp


def test_defaults_cover_every_key():
    hyp = default_hyp()
    assert set(hyp) == set(HYP_KEYS)
    assert hyp["lr0"] == 0.01 and hyp["mosaic"] == 1.0 and hyp["fliplr"] == 0.5


def test_subset_file_fills_defaults(tmp_path):
    f = tmp_path / "h.yaml"
    f.write_text("lr0: 0.02\nmixup: 0.3\n_fitness: 0.5\n")
    hyp = load_hyp(f)
    assert hyp["lr0"] == 0.02 and hyp["mixup"] == 0.3 and hyp["momentum"] == 0.937
    assert "_fitness" not in hyp


@pytest.mark.parametrize("content, word", [("lr0: -0.1\n", "lr0"), ("fliplr: 1.5\n", "fliplr"),
                                            ("lrr0: 0.1\n", "lrr0"), ("mosaic: abc\n", "mosaic")])
def test_bad_hyp_names_key_and_file(tmp_path, content, word):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(HypError) as e:
        load_hyp(f)
    assert word in str(e.value) and "bad.yaml" in str(e.value)


def test_device_parsing_and_errors():
    assert parse_device_ids("cpu") is None and parse_device_ids("0,1") == [0, 1]
    with pytest.raises(DeviceError):
        parse_device_ids("gpu")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            select_device("0", 16)
    with pytest.raises(DeviceError, match="not divisible"):
        select_device("cpu", 15, DistContext(rank=0, local_rank=0, world_size=2))
    assert select_device("cpu", 16).type == "cpu"


def test_compile_on_cpu_without_a_cpp_compiler_is_a_clear_error(monkeypatch):
    import shutil

    from core.device import DeviceError, compile_for_training

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DeviceError, match="needs a C.. compiler"):
        compile_for_training(torch.nn.Linear(2, 2), torch.device("cpu"))
