"""CPU bfloat16 autocast (`--bf16`): when it is on, that the network (and only it) runs in bf16, and that
seeded runs still repeat exactly."""
from __future__ import annotations

import pytest
import torch

from core.callbacks import Callbacks
from core.device import DeviceError, resolve_bf16
from core.train import fit
from tests.helpers import MODEL, train_opts


@pytest.mark.parametrize("caps,auto", [({"amx_bf16": True}, True), ({"avx512_bf16": True}, True),
                                       ({"avx2": True, "avx512_f": True}, False)])
def test_bf16_auto_follows_the_cpus_hardware(monkeypatch, caps, auto):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    cpu = torch.device("cpu")
    assert resolve_bf16("auto", cpu)[0] is auto
    assert resolve_bf16("on", cpu)[0] is True and resolve_bf16("off", cpu)[0] is False
    on, why = resolve_bf16("on", cpu)
    assert ("emulated" in why) is not auto  # forcing it on an AVX2 host says it will be slow
    assert resolve_bf16("on", torch.device("cuda", 0))[0] is False  # CUDA has its own fp16 AMP
    with pytest.raises(DeviceError, match="--bf16 'yes'"):
        resolve_bf16("yes", cpu)


def _dtypes_seen(tiny_data, tmp_path, bf16: str, seed: int = 0):
    """One short run; the dtype of the first conv's output and of what the loss received."""
    seen = {}

    def record(module, inputs, output):
        seen.setdefault("conv", output.dtype)  # returns None: the output is left as it is

    def start(model):
        model.model[0].register_forward_hook(record)

    res = fit(tiny_data, MODEL, None, train_opts(tmp_path, epochs=1, save=False, seed=seed, bf16=bf16),
              Callbacks(on_train_start=start))
    return seen, res


def test_bf16_runs_the_network_in_bf16_the_loss_in_fp32_and_repeats(tiny_data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    from core import loss as loss_module
    received = []
    real_call = loss_module.ComputeLoss.__call__

    def spy(self, preds, targets):
        received.append({p.dtype for p in preds})
        return real_call(self, preds, targets)

    monkeypatch.setattr(loss_module.ComputeLoss, "__call__", spy)
    seen32, fp32 = _dtypes_seen(tiny_data, tmp_path, "off")
    assert seen32["conv"] == torch.float32 and received[0] == {torch.float32}
    received.clear()
    seen16, a = _dtypes_seen(tiny_data, tmp_path, "on")
    assert seen16["conv"] == torch.bfloat16 and received[0] == {torch.float32}  # loss sums stay fp32
    _, b = _dtypes_seen(tiny_data, tmp_path, "on")
    keys = ("train_box", "train_obj", "train_cls", "val_box")
    assert [[h[k] for k in keys] for h in a.history] == [[h[k] for k in keys] for h in b.history]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and all(v.dtype != torch.bfloat16 for v in sa.values())
    # bf16 keeps 8 mantissa bits: the first epoch's losses agree with fp32's to a few percent, not exactly
    for k in ("train_box", "train_obj", "train_cls"):
        assert a.history[0][k] == pytest.approx(fp32.history[0][k], rel=0.05), k
    assert a.history[0]["train_box"] != fp32.history[0]["train_box"]
