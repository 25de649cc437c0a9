"""Nothing lost: atomic writes, resume after a crash or SIGKILL, each epoch once in results.csv."""
from __future__ import annotations

import csv
import os
import random
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from bench.resume_stress import Fault, compare_runs, train_args, train_until_done
from core.atomic import atomic_write
from core.callbacks import Callbacks
from core.checkpoint import load_checkpoint
from core.data.config import load_data_config
from core.data.dataset import YoloDataset
from core.train import TrainOptions, fit
from tests.helpers import MODEL


def _epochs(run: Path) -> list[int]:
    with open(run / "results.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    path = atomic_write(tmp_path / "results.csv", "epoch\n0\n")

    def half_then_killed(f):
        f.write(b"epoch\n0\n1\n2")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_killed)
    assert path.read_text() == "epoch\n0\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_crash_keeps_a_full_last_pt_and_resume_runs_each_epoch_once(tiny_data, tmp_path):
    """An exception that is not a signal (NaN loss, OOM, a bug) leaves last.pt resumable, never stripped."""
    torch.set_num_threads(1)

    def crash(epoch, metrics):
        if epoch == 1:
            raise MemoryError("simulated out of memory")

    opts = TrainOptions(epochs=4, batch_size=8, imgsz=64, workers=0, nbs=8, progress=False, project=str(tmp_path),
                        name="crash", close_mosaic=0)
    with pytest.raises(MemoryError):
        fit(tiny_data, MODEL, None, opts, Callbacks(on_epoch_end=crash))
    run = tmp_path / "crash"
    full = load_checkpoint(run / "last.pt")
    assert full["optimizer"] is not None and full["epoch"] == 1 and not (run / "resume.pt").exists()
    res = fit(tiny_data, MODEL, None, TrainOptions(resume=str(run), workers=0, progress=False, project=str(tmp_path)))
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3] and _epochs(run) == [0, 1, 2, 3]
    assert load_checkpoint(run / "last.pt")["optimizer"] is None  # a normal end strips
    # killed after that final strip, a "resume until done" loop resumes once more: finished, nothing trains
    again = fit(tiny_data, MODEL, None, TrainOptions(resume=str(run), workers=0, progress=False, project=str(tmp_path)))
    assert again.stop_reason == "already finished" and [h["epoch"] for h in again.history] == [0, 1, 2, 3]
    assert [h["fitness"] for h in again.history] == pytest.approx([h["fitness"] for h in res.history], rel=1e-5)
    assert again.best_fitness == pytest.approx(res.best_fitness) and _epochs(run) == [0, 1, 2, 3]



QUIET = {"plots": False, "tensorboard": "off"}  # no pictures or trackers: seconds a run, no number changes


def _interrupt_opts(tmp_path, name):
    return TrainOptions(epochs=4, batch_size=8, imgsz=64, workers=0, nbs=8, progress=False, project=str(tmp_path),
                        name=name, close_mosaic=0, **QUIET)


def test_a_second_signal_during_cleanup_does_not_cut_it_short(tiny_data, tmp_path, monkeypatch):
    """Under torchrun each rank gets a Ctrl-C twice (the terminal's, then torchrun's). The second one must
    not interrupt the cleanup that keeps the full state in resume.pt (it did: CI lost resume.pt)."""
    from core.checkpoint_saver import CheckpointSaver
    torch.set_num_threads(1)
    real_finish = CheckpointSaver.finish

    def finish_with_a_second_signal(self, ended, interrupted):
        os.kill(os.getpid(), signal.SIGINT)  # delivered while the cleanup runs
        return real_finish(self, ended, interrupted)

    monkeypatch.setattr(CheckpointSaver, "finish", finish_with_a_second_signal)

    def ctrl_c(epoch, metrics):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    # What was there before, not Python's default: a shell's `cmd &` starts pytest with SIGINT ignored
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_data, MODEL, None, _interrupt_opts(tmp_path, "twice"), Callbacks(on_epoch_end=ctrl_c))
    run = tmp_path / "twice"
    assert load_checkpoint(run / "resume.pt")["optimizer"] is not None
    assert load_checkpoint(run / "last.pt")["optimizer"] is None  # stripped: the cleanup ran to its end
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored


def test_a_peer_error_after_a_signal_counts_as_the_interrupt(tiny_data, tmp_path):
    """A DDP rank blocked in an all-reduce when Ctrl-C comes sees its peer's death (a RuntimeError) first.
    The run was interrupted, not crashed: resume.pt is written and the error surfaces as KeyboardInterrupt."""
    torch.set_num_threads(1)

    def signal_then_peer_error(epoch, metrics):
        if epoch == 1:
            try:  # the KeyboardInterrupt is lost inside the C++ collective; the signal was still received
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                pass
            raise RuntimeError("[gloo] Connection closed by peer")

    with pytest.raises(KeyboardInterrupt) as info:
        fit(tiny_data, MODEL, None, _interrupt_opts(tmp_path, "peer"), Callbacks(on_epoch_end=signal_then_peer_error))
    assert isinstance(info.value.__cause__, RuntimeError)
    run = tmp_path / "peer"
    assert load_checkpoint(run / "resume.pt")["optimizer"] is not None and _epochs(run) == [0, 1]


def _loadable(run: Path) -> None:
    for f in (run / "last.pt", run / "best.pt", run / "resume.pt"):  # after every cut: the files there load
        if f.exists():
            load_checkpoint(f)


@pytest.mark.slow
def test_interrupted_at_random_moments_then_resumed_ends_as_the_uninterrupted_run(tiny_data, tmp_path):
    """The resume guarantee (docs/errors.md), through the command: a seeded 4-epoch CPU training cut by SIGINT,
    SIGTERM or SIGKILL at seeded moments (mid-epoch, mid-checkpoint-write, a second signal during the first
    one's cleanup, a Ctrl-C right after a resume), resumed until done, ends with the uninterrupted run's
    results.csv (times aside) and every tensor of last.pt and best.pt equal, bit for bit; with 0 and 1 loader
    workers against one reference. Under the stripped-resume.pt, late-lr, lost-best-epoch and per-process
    augmentation streams of before, it failed (bench.resume_stress runs the randomized version)."""
    cfg = load_data_config(tiny_data)  # generated and its label caches written before three processes read it
    YoloDataset(cfg["train"]), YoloDataset(cfg["val"])
    reference = tmp_path / "reference"
    rng = random.Random(28)
    at = rng.randint
    plans = {0: [Fault("batch", "SIGINT", at(5, 7)),            # mid-epoch 1 (4 batches an epoch)
                 Fault("batch", "SIGINT", 1),                    # a second Ctrl-C before the resumed run saves
                 Fault("save", "SIGTERM", at(1, 2)),             # half of best.pt or last.pt written
                 Fault("cleanup", "SIGKILL", at(1, 4), at(1, 3)),  # killed in the cleanup after a Ctrl-C
                 Fault("batch", "SIGKILL", at(1, 4)),
                 Fault("cleanup", "SIGINT", at(1, 4), at(1, 3))],  # torchrun's second Ctrl-C
             1: [Fault("save", "SIGKILL", at(1, 2)), Fault("cleanup", "SIGTERM", at(1, 4), at(1, 3))]}
    with ThreadPoolExecutor(3) as pool:  # the reference and both interrupted runs side by side (one thread each)
        done = {workers: pool.submit(train_until_done, train_args(tiny_data, tmp_path, f"workers{workers}", 4, workers),
                                     tmp_path / f"workers{workers}", plan, after_cut=_loadable)
                for workers, plan in plans.items()}
        train_until_done(train_args(tiny_data, tmp_path, "reference", 4, 0), reference, [])
    for workers, plan in plans.items():
        run, segments = tmp_path / f"workers{workers}", done[workers].result()
        assert all(code != 0 for _, code in segments[:len(plan)]), segments  # every fault cut its process
        assert compare_runs(run, reference) == [], (workers, segments)
        assert load_checkpoint(run / "last.pt")["optimizer"] is None and _epochs(run) == [0, 1, 2, 3]
    # control: one ulp of one weight in last.pt, one digit in results.csv, are both seen
    ckpt = load_checkpoint(run / "last.pt")
    tensor = next(v for v in ckpt["state_dict"].values() if v.is_floating_point())
    tensor.view(-1)[0] = torch.nextafter(tensor.view(-1)[0], torch.tensor(float("inf"), dtype=tensor.dtype))
    torch.save(ckpt, run / "last.pt")
    rows = (run / "results.csv").read_text().splitlines()
    rows[2] = rows[2].replace(",", ",9", 1)
    (run / "results.csv").write_text("\n".join(rows) + "\n")
    problems = compare_runs(run, reference)
    assert any("results.csv" in p for p in problems) and any("last.pt state_dict: 1 tensors" in p for p in problems)


def test_a_second_ctrl_c_after_a_resume_keeps_the_saved_state(tiny_data, tmp_path):
    """Ctrl-C, --resume, Ctrl-C again before the resumed run finishes an epoch: resume.pt must still hold the
    full state (the second cleanup used to copy the stripped last.pt over it: 'has no optimizer state')."""
    torch.set_num_threads(1)

    def ctrl_c_at(when):
        def hook(epoch, *_):
            if epoch == when:
                os.kill(os.getpid(), signal.SIGINT)
        return hook

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_data, MODEL, None, _interrupt_opts(tmp_path, "again"), Callbacks(on_epoch_end=ctrl_c_at(1)))
    run = tmp_path / "again"
    resume = TrainOptions(resume=str(run), workers=0, progress=False, project=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):  # the resumed run starts epoch 2 and is interrupted at once
        fit(tiny_data, MODEL, None, resume, Callbacks(on_epoch_start=ctrl_c_at(2)))
    assert load_checkpoint(run / "resume.pt")["optimizer"] is not None
    res = fit(tiny_data, MODEL, None, resume)
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3] and _epochs(run) == [0, 1, 2, 3]


def _column(run: Path, key: str) -> list[str]:
    with open(run / "results.csv") as f:
        return [r[key] for r in csv.DictReader(f)]


def test_a_resumed_run_keeps_the_lr_schedule(tiny_data, tmp_path):
    """The lr of every epoch after a resume is the uninterrupted run's (it ran one epoch late: the scheduler
    was set to the epoch before the one the checkpoint's optimizer already holds)."""
    torch.set_num_threads(1)
    hyp = {"warmup_epochs": 0.0}
    opts = {"epochs": 5, "batch_size": 8, "imgsz": 64, "workers": 0, "nbs": 8, "progress": False,
            "project": str(tmp_path), "close_mosaic": 0, "threads": 1, "autoanchor": False, "automosaic": False,
            **QUIET}
    whole = fit(tiny_data, MODEL, hyp, TrainOptions(name="whole", **opts))

    def crash(epoch, metrics):
        if epoch == 1:
            raise MemoryError("simulated")
    with pytest.raises(MemoryError):
        fit(tiny_data, MODEL, hyp, TrainOptions(name="cut", **opts), Callbacks(on_epoch_end=crash))
    fit(tiny_data, MODEL, None, TrainOptions(resume=str(tmp_path / "cut"), workers=0, progress=False))
    assert _column(tmp_path / "cut", "lr") == _column(whole.save_dir, "lr")


def test_a_resumed_run_keeps_its_best_epoch(tiny_data, tmp_path, monkeypatch):
    """results.csv rounds fitness to 6 digits, the checkpoint keeps it exact: a resume that looked for the best
    epoch in the csv missed it whenever the rounding went down (about half of all values), so best was empty
    and patience counted from epoch -1."""
    import core.val as val_mod
    epoch_now = [0]
    fitness = {0: 0.1234564, 1: 0.1234564, 2: 0.05, 3: 0.05, 4: 0.05}  # '0.123456' in the csv: rounded down

    def fake_validate(model, loader, **kw):
        f = fitness[epoch_now[0]]
        return {"P": f, "R": f, "mAP50": f, "mAP50-95": f, "val_box": 0.0, "val_obj": 0.0, "val_cls": 0.0}
    monkeypatch.setattr(val_mod, "validate", fake_validate)

    def crash(epoch, metrics):
        if epoch == 1:
            raise MemoryError("simulated")
    start = Callbacks(on_epoch_start=lambda e: epoch_now.__setitem__(0, e))
    opts = TrainOptions(epochs=5, batch_size=8, imgsz=64, workers=0, nbs=8, progress=False, project=str(tmp_path),
                        name="best", close_mosaic=0, patience=2, threads=1, autoanchor=False, automosaic=False,
                        **QUIET)
    with pytest.raises(MemoryError):
        fit(tiny_data, MODEL, None, opts, Callbacks(on_epoch_start=start.on_epoch_start, on_epoch_end=crash))
    res = fit(tiny_data, MODEL, None, TrainOptions(resume=str(tmp_path / "best"), workers=0, progress=False), start)
    assert res.best.get("epoch") == 1 and res.best_fitness == res.best["fitness"]
    assert res.stop_reason == "early_stop" and [h["epoch"] for h in res.history] == [0, 1, 2, 3]  # patience from 1


def test_resume_picks_the_newest_run_and_its_newest_full_state(tmp_path):
    """--resume alone: the newest run under the project, not any older run's resume.pt. In a run folder:
    resume.pt, unless last.pt beside it is full (a kill between saving an epoch and deleting resume.pt)."""
    from core.checkpoint import save_checkpoint, strip_checkpoint
    from core.model.yolo import Model
    from core.run_dir import resolve_resume

    model = Model(MODEL, nc=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def full(path, epoch, age):
        save_checkpoint(path, model, optimizer=opt, epoch=epoch)
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
        return path

    interrupted, crashed = tmp_path / "interrupted", tmp_path / "crashed"
    full(interrupted / "resume.pt", 3, age=100)
    strip_checkpoint(full(interrupted / "last.pt", 3, age=100))
    os.utime(interrupted / "last.pt", (0, (interrupted / "resume.pt").stat().st_mtime))
    full(crashed / "last.pt", 1, age=10)  # newer: crashed after the other run was interrupted
    assert resolve_resume(True, str(tmp_path)) == crashed / "last.pt"
    assert resolve_resume(str(interrupted), str(tmp_path)) == interrupted / "resume.pt"
    full(interrupted / "last.pt", 4, age=0)  # epoch 4 saved, killed before resume.pt went
    assert resolve_resume(str(interrupted), str(tmp_path)) == interrupted / "last.pt"
    assert resolve_resume(True, str(tmp_path)) == interrupted / "last.pt"
