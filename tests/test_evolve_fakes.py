"""A fast, deterministic stand-in for core.train.fit, used to test the evolution orchestration
(workers, storage, resume, failures) without training. Also imported by worker subprocesses
through `--fit tests.test_evolve_fakes:fake_fit`."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

from core.callbacks import Callbacks, StopTraining


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


def test_fake_fit_is_deterministic_and_peaks_inside_the_space():
    from core.hyp import default_hyp
    from core.train import TrainOptions

    hyp = default_hyp()
    opts = TrainOptions(epochs=3, fitness_weights=(0, 0, 0.1, 0.9))
    a, b = fake_fit(None, None, hyp, opts), fake_fit(None, None, hyp, opts)
    assert [h["fitness"] for h in a.history] == [h["fitness"] for h in b.history]
    assert a.best["epoch"] == 2
    assert score({**hyp, "lr0": 0.003, "mosaic": 0.7, "momentum": 0.9, "mixup": 0.2, "anchors": 4}) == 1.0
    assert score(hyp) < 1.0
