"""DDP under torchrun on CPU (gloo): 2 processes on a tiny dataset agree with one process of the same
global batch, only rank 0 writes, and an interrupted DDP run resumes.

Why the comparison can be tight: every image of the dataset is the same picture with the same boxes
and augmentation is off, so each rank's half batch is the same as the whole batch. The per-rank loss
means, BatchNorm's batch statistics and the gradient (DDP's average of the ranks' gradients, with the
loss scaled by WORLD_SIZE as YOLOv5 does) are then mathematically those of the single process, and
what is left is float32 summation order (batch of 4 vs 8 in the convolutions, gloo's all-reduce):
measured, the same as one process run with 1 vs 2 threads (a few ulps: 6e-8 absolute on weights near
zero, < 1e-5 relative elsewhere; BN running variances differ by up to 1e-3 relative, as the unbiased
correction n/(n-1) uses each rank's n).
Both runs train in NCHW (the default; said explicitly with --no-channels-last): PyTorch's channels_last CPU BatchNorm sums its batch
statistics 10-25x less accurately in float32 (measured against float64: 5.5e-5 vs 3.6e-6 relative for
inputs of mean 10, std 0.1), and these identical grey images are its worst case: with it, batch 4 vs 8
differs by 1.3e-3 relative in the second epoch's loss, while the one optimizer step before it moved that
loss by only 9e-3 relative, so a tolerance wide enough for it would miss a halved step (a missing
WORLD_SIZE factor). The DDP arithmetic tested here does not
depend on the layout; the interrupted-and-resumed DDP run trains in channels_last (--channels-last), so
that path (optimizer state given its parameters' layout on resume) stays covered under DDP too.
Any real mistake (a missing WORLD_SIZE factor, each rank stepping on its own gradient, a rank writing,
a sampler giving ranks overlapping or missing data) moves the weights by orders of magnitude more.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from core.checkpoint import load_checkpoint
from tests.helpers import MODEL, REPO

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
NO_AUG = {k: 0.0 for k in ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective",
                           "flipud", "fliplr", "mosaic", "mixup", "copy_paste")}


@pytest.fixture(scope="module")
def same_image_data(tmp_path_factory):
    """8 training and 4 val copies of one 64x64 picture with three boxes (YOLO format)."""
    root = tmp_path_factory.mktemp("same")
    img = np.full((64, 64, 3), 114, np.uint8)
    cv2.rectangle(img, (6, 8), (26, 30), (20, 200, 20), -1)
    cv2.circle(img, (44, 20), 10, (200, 30, 30), -1)
    cv2.rectangle(img, (30, 40), (58, 58), (30, 30, 220), -1)
    labels = "0 0.25 0.297 0.3125 0.344\n1 0.6875 0.3125 0.3125 0.3125\n0 0.6875 0.7656 0.4375 0.2813\n"
    for split, n in (("train", 8), ("val", 4)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), img)
            (root / "labels" / split / f"{i}.txt").write_text(labels)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [box, disc]\n")
    (root / "hyp.yaml").write_text(yaml.safe_dump({**NO_AUG, "warmup_epochs": 0.0, "lr0": 0.01}))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_cmd(root: Path, project: Path, name: str, epochs: int, *extra: str) -> list[str]:
    return ["-m", "core.train", "--data", str(root / "data.yaml"), "--model", MODEL, "--hyp", str(root / "hyp.yaml"),
            "--epochs", str(epochs), "--batch-size", "8", "--imgsz", "64", "--workers", "0", "--device", "cpu",
            "--optimizer", "SGD", "--nbs", "8", "--close-mosaic", "0", "--seed", "0", "--threads", "1",
            "--bf16", "off",  # fp32 on every host: bf16's 8-bit mantissa is far coarser than the tolerance below
            "--project", str(project), "--name", name, "--no-progress", *extra]


def _torchrun(args: list[str], nproc: int = 2) -> list[str]:
    return [TORCHRUN, "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(path)  # weights_only: loads without running code
    return {k: v.double() for k, v in ck["state_dict"].items() if v.dtype.is_floating_point}


def test_two_cpu_processes_match_one_process_of_the_same_global_batch(same_image_data, tmp_path):
    root = same_image_data
    single = subprocess.run([sys.executable, *_train_cmd(root, tmp_path, "single", 2, "--no-channels-last")],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout + single.stderr
    ddp = subprocess.run(_torchrun(_train_cmd(root, tmp_path, "ddp", 2, "--no-channels-last")), env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]   # rank 1 made no run dir
    a, b = pd.read_csv(tmp_path / "single" / "results.csv"), pd.read_csv(tmp_path / "ddp" / "results.csv")
    assert len(a) == len(b) == 2 and b.epoch.tolist() == [0, 1]                 # one writer, one row per epoch
    for col in ("train_box", "train_obj", "train_cls", "val_box", "val_obj"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-4, err_msg=col)
    for name in ("best.pt", "last.pt"):
        wa, wb = _weights(tmp_path / "single" / name), _weights(tmp_path / "ddp" / name)
        assert wa.keys() == wb.keys()
        # Checkpoints store float16: two float32 values a few ulps apart may round to neighbouring float16
        # values, one float16 ulp = 2**-10 relative. atol: BN biases still near 0 (~2e-5) differ by float32
        # ulps (6e-8), as with 1 vs 2 threads. A missing WORLD_SIZE factor gives 0.25 relative.
        for k in wa:
            rtol = 3e-3 if k.endswith("running_var") else 2 ** -10  # running_var: n/(n-1) with each rank's n
            np.testing.assert_allclose(wb[k].numpy(), wa[k].numpy(), rtol=rtol, atol=1e-6, err_msg=f"{name} {k}")


def test_an_interrupted_ddp_run_resumes(same_image_data, tmp_path):
    root = same_image_data
    proc = subprocess.Popen(_torchrun(_train_cmd(root, tmp_path, "run", 6, "--channels-last")), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    results = tmp_path / "run" / "results.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # stop it once 2 epochs are saved
        if results.is_file() and len(results.read_text().strip().splitlines()) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: torchrun and both ranks get it
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    done = pd.read_csv(results).epoch.tolist()
    assert 2 <= len(done) < 6, out
    assert load_checkpoint(tmp_path / "run" / "resume.pt")["optimizer"] is not None  # rank 0 kept the full state

    again = subprocess.run(_torchrun(_train_cmd(root, tmp_path, "run", 6, "--resume", str(tmp_path / "run"))),
                           env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert pd.read_csv(results).epoch.tolist() == list(range(6))              # each epoch once, none lost
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 5
    assert not (tmp_path / "run" / "resume.pt").exists()


def test_sync_bn_is_refused_clearly_on_cpu_ddp_and_ignored_in_one_process(same_image_data, tmp_path):
    root = same_image_data
    ddp = subprocess.run(_torchrun(_train_cmd(root, tmp_path, "sync", 1, "--sync-bn")), env=_env(),
                         capture_output=True, text=True, timeout=300)
    # each rank prints our one-line error (torchrun then adds its own report of the failed children)
    assert ddp.returncode != 0 and (ddp.stdout + ddp.stderr).count("core.train: error: --sync-bn needs CUDA") >= 1
    assert not (tmp_path / "sync" / "results.csv").exists()                     # refused before training
    one = subprocess.run([sys.executable, *_train_cmd(root, tmp_path, "one", 1, "--sync-bn")], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and "--sync-bn ignored" in one.stdout + one.stderr


@pytest.mark.parametrize("nan_calls,fails", [("2-", True), ("2,3", False)])
def test_a_nan_loss_on_one_rank_is_decided_by_all_ranks(same_image_data, tmp_path, nan_calls, fails):
    """Rank 1 alone sees NaN losses. Two in a row: every rank skips those steps and the run goes on.
    From the 2nd step on: all ranks fail at the same (3rd) bad step instead of rank 0 waiting forever
    for rank 1 at the next all-reduce."""
    root = same_image_data
    cmd = _torchrun([str(REPO / "tests" / "core" / "ddp_nan_train.py"), *_train_cmd(root, tmp_path, "nan", 5)[2:]])
    t0 = time.time()
    run = subprocess.run(cmd, env={**_env(), "NAN_RANK": "1", "NAN_CALLS": nan_calls}, capture_output=True,
                         text=True, timeout=300)
    out = run.stdout + run.stderr
    assert time.time() - t0 < 240  # no hang
    rows = pd.read_csv(tmp_path / "nan" / "results.csv") if (tmp_path / "nan" / "results.csv").exists() else None
    if fails:
        assert run.returncode != 0
        assert out.count("training loss not finite for 3 optimizer steps in a row") >= 1, out[-3000:]
        assert rows is not None and rows.epoch.tolist() == [0, 1, 2]   # epochs 1, 2 skipped their step; 3 failed
        assert (tmp_path / "nan" / "last.pt").is_file()
    else:
        assert run.returncode == 0, out[-3000:]
        assert rows.epoch.tolist() == [0, 1, 2, 3, 4] and "optimizer steps skipped for a non-finite loss" in out
        w = _weights(tmp_path / "nan" / "last.pt")
        assert all(torch.isfinite(v).all() for v in w.values())
