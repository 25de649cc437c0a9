"""Starting from a checkpoint trained on other classes: every tensor whose name and shape match is copied."""
import logging
import math
from pathlib import Path

import torch

from core.checkpoint import save_checkpoint, strip_checkpoint
from core.model.yolo import Model
from core.train import _build_model
from tests.helpers import MODEL as HELPER_MODEL

MODEL = Path(HELPER_MODEL)


def test_transfer_to_another_class_count_copies_every_matching_tensor(tmp_path, caplog):
    torch.manual_seed(0)
    src = Model(str(MODEL), nc=6)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))  # far from any fresh initialisation
    path = strip_checkpoint(save_checkpoint(tmp_path / "src.pt", src))  # fp16, as best.pt is kept
    want = {k: v.half().float() for k, v in src.state_dict().items()}

    with caplog.at_level(logging.INFO, logger="core.train"):
        net, _, fresh = _build_model(str(path), 3, ["a", "b", "c"])
    assert net.nc == 3 and not fresh
    own = net.state_dict()
    same = [k for k in own if k in want and own[k].shape == want[k].shape]
    head = {f"model.24.m.{i}.{t}" for i in range(3) for t in ("weight", "bias")}
    assert set(own) - set(same) == head  # only the Detect outputs (3 x (5+nc) channels) differ
    for k in same:
        assert torch.equal(own[k].float(), want[k]) and own[k].dtype != torch.float16, k
    assert f"Transferred {len(same)}/{len(own)} items from {path}" in caplog.text
    # The new head is freshly initialised: objectness prior ~8 objects per 640 px image.
    det = net.model[-1]
    for conv, s in zip(det.m, det.stride.tolist()):
        assert torch.allclose(conv.bias.view(det.na, -1)[:, 4], torch.tensor(math.log(8 / (640 / s) ** 2)))


def test_same_class_count_transfers_everything(tmp_path, caplog):
    path = save_checkpoint(tmp_path / "src.pt", Model(str(MODEL), nc=6))
    with caplog.at_level(logging.INFO, logger="core.train"):
        net, _, _ = _build_model(str(path), 6, list("abcdef"))
    n = len(net.state_dict())
    assert f"Transferred {n}/{n} items" in caplog.text


def test_weights_into_a_changed_architecture(tmp_path, caplog):
    from core.model.yolo import load_arch

    torch.manual_seed(1)
    src = Model(str(MODEL), nc=6)
    path = save_checkpoint(tmp_path / "src.pt", src)
    arch = load_arch(str(MODEL))
    arch["channels"] = {"model.9.cv2": 48}  # SPPF output narrowed: it and its consumer change shape
    with caplog.at_level(logging.INFO, logger="core.train"):
        net, _, fresh = _build_model(arch, 6, list("abcdef"), weights=str(path))
    assert not fresh  # the transferred head keeps its biases (no re-initialisation from class counts)
    own, old = net.state_dict(), src.state_dict()
    changed = {k for k in own if own[k].shape != old[k].shape}
    assert changed and all(k.startswith(("model.9.cv2.", "model.10.conv.")) for k in changed)
    assert all(torch.equal(own[k], old[k]) for k in own if k not in changed)
    assert f"Transferred {len(own) - len(changed)}/{len(own)} items from {path}" in caplog.text
