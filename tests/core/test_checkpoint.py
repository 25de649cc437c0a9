import os

import pytest
import torch

from core.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint, strip_checkpoint
from core.ema import ModelEMA
from core.model.yolo import Model

CPU_YAML = "studies/models/yolov5-cpu.yaml"


def _trained_like(model):
    """One SGD step so the optimizer holds momentum buffers, as in a real last.pt."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    out = model(torch.rand(2, 3, 64, 64))
    sum(o.mean() for o in out).backward()
    opt.step()
    return opt


def test_round_trip_weights_only(tmp_path):
    model = Model(CPU_YAML, nc=3)
    ema = ModelEMA(model)
    path = save_checkpoint(tmp_path / "a.pt", model, ema=ema.ema, hyp={"lr0": 0.01}, metrics={"mAP50": 0.5}, epoch=3)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["epoch"] == 3 and raw["metrics"]["mAP50"] == 0.5 and raw["arch"]["nc"] == 3
    rebuilt = model_from_checkpoint(path)
    x = torch.rand(1, 3, 64, 64)
    model.eval()
    assert torch.allclose(rebuilt(x)[0], ema.ema(x)[0], atol=1e-6)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pwned_by_checkpoint",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "yolo-ep-1", "arch": {}, "payload": Evil()}, path)
    if os.path.exists("/tmp/pwned_by_checkpoint"):
        os.remove("/tmp/pwned_by_checkpoint")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/pwned_by_checkpoint")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="x.pt"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_strip_is_a_third_or_less(tmp_path):
    model = Model("studies/models/yolov5n.yaml", nc=80)
    opt = _trained_like(model)
    ema = ModelEMA(model)
    last = save_checkpoint(tmp_path / "last.pt", model, ema=ema.ema, optimizer=opt, epoch=0)
    full = last.stat().st_size
    out = strip_checkpoint(last, tmp_path / "stripped.pt")
    assert out.stat().st_size <= full / 3
    ck = load_checkpoint(out)
    assert ck["optimizer"] is None and ck["ema"] is None
    assert all(v.dtype == torch.float16 for v in ck["state_dict"].values() if v.dtype.is_floating_point)
    model_from_checkpoint(out)  # still loads


def test_channels_last_model_saves_standard_layout(tmp_path):
    """A model trained in channels_last (`--channels-last`) writes NCHW-contiguous tensors, optimizer
    state included, so weights_only loading, rebuilding and export see the standard format."""
    model = Model(CPU_YAML, nc=3).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model.train()
    sum(o.mean() for o in model(torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))).backward()
    opt.step()
    assert any(not v["exp_avg"].is_contiguous() for v in opt.state.values())  # the live state is channels_last
    ema = ModelEMA(model)
    path = save_checkpoint(tmp_path / "cl.pt", model, ema=ema.ema, optimizer=opt, epoch=0)
    ckpt = load_checkpoint(path)
    tensors = [*ckpt["state_dict"].values(), *ckpt["ema"].values(),
               *(v for st in ckpt["optimizer"]["state"].values() for v in st.values() if isinstance(v, torch.Tensor))]
    assert all(t.is_contiguous() for t in tensors)
    live = model.state_dict()
    assert all(torch.equal(ckpt["state_dict"][k], live[k]) for k in live)
    rebuilt = model_from_checkpoint(path)
    assert all(p.is_contiguous() for p in rebuilt.parameters())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x)[0], ema.ema.eval()(x)[0], atol=1e-4, rtol=1e-5)
