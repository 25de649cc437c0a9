"""A full disk while a training writes results.csv or a checkpoint: an error that names the file, the previous
file intact, no temp file left. The full disk is injected: the write of the k-th file opened by core.atomic
stores half of what it is given, then raises ENOSPC (a real full disk takes what fits, then fails)."""
from __future__ import annotations

import builtins
import errno

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.checkpoint_saver import CheckpointSaver
from core.ema import ModelEMA
from core.model.yolo import Model
from core.run_dir import read_history
from tests.helpers import MODEL, disk_fills


class FullDisk:
    """open() for core.atomic whose `at`-th opened file (1-based) runs out of space in its first write."""

    def __init__(self, at: int) -> None:
        self.at, self.opened = at, 0

    def __call__(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        self.opened += 1
        return disk_fills(f) if self.opened == self.at else f


def saver_with_an_epoch(tmp_path):
    model = Model(MODEL, nc=2)
    ema = ModelEMA(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    saver = CheckpointSaver(tmp_path / "run", enabled=True, hyp={"lr0": 0.01}, train_opts={"epochs": 2})
    saver.start(resumed=False)
    saver.save_epoch(model, ema, opt, [{"epoch": 0, "fitness": 0.5}], improved=True, best_fitness=0.5)
    return saver, model, ema, opt


@pytest.mark.parametrize("at, name", [(1, "results.csv"), (2, "best.pt"), (3, "last.pt")])
def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch, at, name):
    """Epoch 1's save_epoch writes results.csv, best.pt (improved) and last.pt in turn; the disk fills at one."""
    saver, model, ema, opt = saver_with_an_epoch(tmp_path)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    monkeypatch.setattr("core.atomic.open", FullDisk(at), raising=False)
    with pytest.raises(OSError, match=rf"No space left on device: cannot write .*run/{name} \(the previous {name} "
                                      r"is kept, unchanged\)") as err:
        saver.save_epoch(model, ema, opt, [{"epoch": 0, "fitness": 0.5}, {"epoch": 1, "fitness": 0.6}],
                         improved=True, best_fitness=0.6)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(run / name)
    assert (run / name).read_bytes() == before[name]  # the previous file, byte for byte
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    if name == "results.csv":
        assert [h["epoch"] for h in read_history(run / name)] == [0]
    else:
        assert load_checkpoint(run / name)["epoch"] == 0  # still loads
