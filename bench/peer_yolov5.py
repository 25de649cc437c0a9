"""YOLOv5 v7.0 (pip `yolov5` 7.0.14) as published, run on the peer venv of today: the peer side of bench runs.

Runs in the peer venv only (`make .venv-peer/.yolov5`), as a script or imported by another peer-side script
(bench/fidelity_peer.py); imports nothing from this repository. The package is used as published: what no
longer runs on numpy 2, torch >= 2.6 and setuptools >= 81 is wrapped here, in this process, before yolov5 is
imported, and none of its files is changed:
- `np.trapz` (removed from numpy 2.x; metrics.py integrates AP with it): bound to `np.trapezoid`, its
  successor with the same arguments and result;
- `torch.load`: YOLOv5 loads its own checkpoints, pickled model objects, which torch >= 2.6 refuses by
  default (weights_only=True); TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD gives calls that do not choose the old default;
- `pkg_resources` (gone from setuptools 81; general.py imports it for `parse_version` only): a module with
  that one function, from `packaging`;
- `roboflow` (train.py imports it for Roboflow-hosted datasets only): a stand-in that refuses to be used;
- the plot font: check_dataset fetches Arial.ttf from ultralytics.com whenever YOLOv5's config folder lacks
  it (the peer machine may be offline): YOLOV5_CONFIG_DIR points at a folder of the venv holding matplotlib's
  DejaVu Sans under that name (it only labels plots).

    .venv-peer/bin/python bench/peer_yolov5.py --check            # versions, and the model builds
    .venv-peer/bin/python bench/peer_yolov5.py train --data D.yaml --cfg yolov5n.yaml --weights '' ...
    .venv-peer/bin/python bench/peer_yolov5.py train --timing T.json --data D.yaml ...   # bench.peers' arm

`--timing T.json` (first after `train`) adds three callbacks, as bench/peer_ultralytics.py's, that write
`{"epochs": [{"epoch", "train_seconds", "batches", "images"}]}` after each epoch: train_seconds spans
on_train_epoch_start -> on_train_epoch_end (before validation), images counts the batches' images.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # read by torch.load at each call

import numpy as np  # noqa: E402 (after the environment it reads)
from packaging.version import parse as parse_version  # noqa: E402

YOLOV5_VERSION = "7.0.14"


def _refuse(*args, **kwargs):
    raise RuntimeError("roboflow is not installed in the peer venv: Roboflow-hosted datasets are not supported")


def install_shims() -> None:
    """Make yolov5 7.0.14 importable and runnable here (see the module docstring); idempotent."""
    _local_font()
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    try:
        import pkg_resources  # noqa: F401 (an older setuptools still has it)
    except ImportError:
        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse_version)
    try:
        import roboflow  # noqa: F401
    except ImportError:
        roboflow = types.ModuleType("roboflow")
        roboflow.Roboflow = _refuse
        core, version = types.ModuleType("roboflow.core"), types.ModuleType("roboflow.core.version")
        version.Version = _refuse
        sys.modules.update({"roboflow": roboflow, "roboflow.core": core, "roboflow.core.version": version})


def _local_font() -> None:
    """YOLOv5's config folder (read when yolov5 is imported) in the venv, with a font named as it expects."""
    if os.environ.get("YOLOV5_CONFIG_DIR"):
        return
    import matplotlib

    folder = Path(sys.prefix) / "share" / "yolov5-config"
    folder.mkdir(parents=True, exist_ok=True)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (folder / name).exists():
            shutil.copyfile(font, folder / name)
    os.environ["YOLOV5_CONFIG_DIR"] = str(folder)


def check() -> None:
    """Print the versions and build yolov5n from the package's own yaml (no weights, nothing downloaded)."""
    install_shims()
    import torch
    import yolov5
    from yolov5.models.yolo import Model

    if yolov5.__version__ != YOLOV5_VERSION:
        raise SystemExit(f"yolov5 {yolov5.__version__} installed, {YOLOV5_VERSION} expected")
    model = Model(os.path.join(os.path.dirname(yolov5.__file__), "models", "yolov5n.yaml"), nc=10)
    params = sum(p.numel() for p in model.parameters())
    print(f"yolov5 {yolov5.__version__}, torch {torch.__version__}, numpy {np.__version__}: "
          f"yolov5n (nc=10) builds with {params} parameters")


def train(argv: list[str]) -> None:
    """YOLOv5's train.py with `argv`, as `python train.py ARGV` would run it (`--timing T.json` first: timed)."""
    install_shims()
    timing = None
    if argv[:1] == ["--timing"]:
        if len(argv) < 2:
            raise SystemExit("usage: peer_yolov5.py train --timing OUT.json ARGS")
        timing, argv = argv[1], argv[2:]
    sys.argv = ["train.py", *argv]
    from yolov5 import train as yolov5_train
    from yolov5.utils.callbacks import Callbacks

    callbacks = Callbacks()
    if timing:
        for hook, fn in epoch_timer(timing).items():
            callbacks.register_action(hook, name=f"bench-{hook}", callback=fn)
    yolov5_train.main(yolov5_train.parse_opt(), callbacks=callbacks)


def epoch_timer(out: str) -> dict:
    """YOLOv5 callbacks (hook -> function) that write each epoch's training seconds and images to `out`."""
    record: dict = {"epochs": []}
    state: dict = {}

    def start() -> None:
        state.update(t0=time.perf_counter(), batches=0, images=0)

    def batch_end(model, ni, imgs, *rest) -> None:
        state["batches"] += 1
        state["images"] += int(imgs.shape[0])

    def epoch_end(epoch: int) -> None:
        record["epochs"].append({"epoch": int(epoch), "train_seconds": time.perf_counter() - state["t0"],
                                 "batches": state["batches"], "images": state["images"]})
        with open(out, "w") as f:
            json.dump(record, f, indent=1)

    return {"on_train_epoch_start": start, "on_train_batch_end": batch_end, "on_train_epoch_end": epoch_end}


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--check"]:
        check()
    elif argv[:1] == ["train"]:
        train(argv[1:])
    else:
        raise SystemExit("usage: peer_yolov5.py --check | train ARGS (YOLOv5 train.py's arguments)")


if __name__ == "__main__":
    main()
