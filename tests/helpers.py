"""What several test modules share: repository paths, training options for tiny runs, data yamls, random
models for the pruning tests, and a fake fit for the orchestration tests. Fixtures live in conftest.py.

`fake_fit` is also imported by worker subprocesses through `--fit tests.helpers:fake_fit`.
"""
from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from core.callbacks import Callbacks, StopTraining
from core.model.yolo import Model
from core.train import TrainOptions

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "studies" / "models"
MODEL = str(MODELS / "yolov5-cpu.yaml")
FAKE_FIT = "tests.helpers:fake_fit"
SHAPE_NAMES = "[circle, square, triangle, star, cross, ring]"


# --- reading our source (the layering and API tests run no module) ---------------------------------------

def module_file(root: Path, module: str) -> Path | None:
    """core.data.files -> core/data/files.py (a package -> its __init__.py); None when not ours or absent."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def public_names(path: Path) -> list[str] | None:
    """The module's `__all__` (a literal list or tuple of strings), or None when it has none."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


# --- training and data ------------------------------------------------------------------------------

def train_opts(tmp_path, **kw) -> TrainOptions:
    """Options for a tiny, quiet, seeded CPU training under tmp_path/run (keywords override); no pictures and no
    TensorBoard unless asked (tests/core/test_plots.py and test_trackers.py ask): they would cost every test time."""
    base = dict(epochs=2, batch_size=8, imgsz=64, workers=0, nbs=8, progress=False, project=str(tmp_path),
                name="run", seed=0, plots=False, tensorboard="off")
    base.update(kw)
    return TrainOptions(**base)


def synthetic_yaml(root: Path, name: str, names: str, synthetic: str) -> str:
    """Write root/<name>.yaml for a built-in shapes set generated under root/shapes on first use; its path."""
    (root / f"{name}.yaml").write_text(
        f"path: shapes\ntrain: images/train\nval: images/val\nnames: {names}\nsynthetic: {{{synthetic}}}\n")
    return str(root / f"{name}.yaml")


MEDIUM_SHAPES = "seed: 3, n_train: 16, n_val: 4, imgsz: 96, min_size: 20, max_size: 55, max_objects: 2"


def automosaic_on(data: str, hyp, imgsz: int):
    """AutoMosaic's check of `hyp` on the training labels of `data` at `imgsz` (what core.train decides)."""
    from core.data.automosaic import check_mosaic
    from core.data.config import load_data_config
    from core.data.dataset import YoloDataset
    cfg = load_data_config(data)
    ds = YoloDataset(cfg["train"], imgsz=imgsz, nc=int(cfg["nc"]))
    return check_mosaic(ds.labels, ds.shapes, imgsz, hyp)


# --- random models for the pruning tests --------------------------------------------------------------

def random_model(yaml_name: str, seed: int = 0, ch: int = 3) -> Model:
    """A model with random BN gammas (some near zero) and betas, running statistics calibrated on
    random images then perturbed (so signals neither vanish nor explode), in eval mode."""
    torch.manual_seed(seed)
    model = Model(str(MODELS / yaml_name), nc=3, ch=ch)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        c = m.num_features
        m.weight.data = torch.rand(c) * 1.5 - 0.2
        m.bias.data = torch.randn(c) * 0.5
        m.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.rand(4, ch, 64, 64))
    for m in bns:
        m.momentum = 0.03
        m.running_mean += 0.1 * torch.randn_like(m.running_mean) * m.running_var.sqrt()
        m.running_var *= 0.8 + 0.4 * torch.rand_like(m.running_var)
    return model.eval()


def constant_af_model(nc: int = 3, sides=(2, 3, 4, 5), scores=(0.2, 0.6, 0.3)) -> Model:
    """yolov5-cpu-af whose head ignores the image: every cell's side distributions put all their mass on the
    bins `sides` (l, t, r, b, in strides) and its class scores are `scores`. Eval mode."""
    model = Model(str(MODELS / "yolov5-cpu-af.yaml"), nc=nc).eval()
    det = model.model[-1]
    for box, cls in zip(det.box, det.cls):
        for out in (box[-1], cls[-1]):
            torch.nn.init.zeros_(out.weight)
        bias = torch.zeros(4, det.reg_max)
        bias[torch.arange(4), torch.tensor(sides)] = 60.0  # softmax mass e^-60 elsewhere: the distance is the bin
        box[-1].bias.data = bias.flatten()
        cls[-1].bias.data = torch.tensor([math.log(p / (1 - p)) for p in scores])
    return model


def raw_maps(model, x):
    with torch.no_grad():
        return model(x)[1]


def max_diff(a, b):
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


def replicate_padding(model):
    """Pad every conv by edge replication: a constant channel then stays constant at the borders too."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0):
            m.padding_mode = "replicate"
    return model


# --- a fake fit for the orchestration tests -----------------------------------------------------------

def score(hyp: dict) -> float:
    """A smooth function of the hyp with its optimum inside the space (lr0 = 0.003, mosaic = 0.7, ...)."""
    d = (math.log10(hyp["lr0"]) - math.log10(0.003)) ** 2 + (hyp["mosaic"] - 0.7) ** 2 \
        + (hyp["momentum"] - 0.9) ** 2 * 4 + (hyp["mixup"] - 0.2) ** 2 + (hyp["anchors"] - 4) ** 2 * 0.01
    return math.exp(-d)


def fake_fit(data, model, hyp, opts, callbacks: Callbacks | None = None):
    """Per epoch: metrics scaled from score(hyp); sleeps FAKE_FIT_SLEEP seconds (default 0.01) per epoch.
    Raises FloatingPointError when hyp['lr0'] > FAKE_FIT_FAIL_LR0 (default: never)."""
    callbacks = callbacks or Callbacks()
    if hyp["lr0"] > float(os.environ.get("FAKE_FIT_FAIL_LR0", "inf")):
        raise FloatingPointError(f"training loss is nan at epoch 0 (lr0={hyp['lr0']})")
    pause = float(os.environ.get("FAKE_FIT_SLEEP", "0.01"))
    s = score(hyp) * (1 + 0.005 * (opts.seed % 7))  # seed noise of 0-3% (none at seed 0)
    history, best, stop = [], {}, "completed"
    for epoch in range(opts.epochs):
        t0 = time.time()
        time.sleep(pause)
        k = (epoch + 1) / opts.epochs
        m = {"epoch": epoch, "P": 0.9 * s * k, "R": 0.8 * s * k, "mAP50": s * k, "mAP50-95": 0.6 * s * k,
             "val_box": 0.1 / (s + 0.1), "val_obj": 0.05, "val_cls": 0.01}
        w = opts.fitness_weights
        m["fitness"] = w[0] * m["P"] + w[1] * m["R"] + w[2] * m["mAP50"] + w[3] * m["mAP50-95"]
        m["seconds"] = time.time() - t0
        history.append(m)
        if not best or m["fitness"] > best["fitness"]:
            best = m
        try:
            if callbacks.on_epoch_end:
                callbacks.on_epoch_end(epoch, m)
        except StopTraining as e:
            stop = f"callback: {e.reason}"
            break
    best_path = None
    if opts.save:  # a stand-in checkpoint, so callers that need best.pt (base run, retrain) find one
        best_path = Path(opts.project) / opts.name / "best.pt"
        best_path.parent.mkdir(parents=True, exist_ok=True)
        best_path.write_text(f"fake {hyp['lr0']} {opts.seed}")
    return SimpleNamespace(history=history, best=best, best_fitness=best.get("fitness", float("-inf")),
                           stop_reason=stop, model=None, save_dir=None, best_path=best_path, last_path=None)


# --- the kill-and-resume harness (bench/crash_resume.py) ----------------------------------------------

def run_crash_bench(tmp_path: Path, target: str, seed: int, runs: int = 1) -> dict:
    """`python -m bench.crash_resume --target TARGET --fit fake` in its own process (its forks must start from a
    process whose thread pools never ran); its JSON result."""
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "bench.crash_resume", "--target", target, "--fit", "fake", "--runs", str(runs),
           "--seed", str(seed), "--no-record", "--root", str(tmp_path), "--json", str(out)]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode in (0, 1) and out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


# --- faults and fakes shared by several test files -----------------------------------------------------

def disk_fills(f):
    """Make open file `f`'s next write put half its bytes on disk, then fail as a full disk does (ENOSPC)."""
    import errno
    write = f.write

    def full(data):
        write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    f.write = full
    return f


def fake_prune_fit(calls: list | None = None):
    """A stand-in for prune.pipeline's `fit`: the baseline is a fresh model with BN gammas spread over 0.05-1 (so
    a share prunes a predictable set), every later stage returns its model untouched; `calls` collects
    (stage name, optimizer) per call."""
    def fit(data, model, hyp, opts, callbacks=None):
        if calls is not None:
            calls.append((opts.name, opts.optimizer))
        if not isinstance(model, torch.nn.Module):
            torch.manual_seed(0)
            model = Model(model, nc=data["nc"])
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.data.uniform_(0.05, 1.0)
        return SimpleNamespace(model=model, best_path=None)
    return fit
