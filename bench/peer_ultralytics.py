"""`yolo ARGS...` with per-epoch training timings: the Ultralytics side of bench/peers.py.

Runs in the peer venv (.venv-peer, which has Ultralytics and torchvision; ours has neither), as a
script: `.venv-peer/bin/python bench/peer_ultralytics.py --timing T.json train model=... data=...`.
It imports nothing from this repository. The run is exactly the `yolo` command's (its entrypoint
with the same argv); the only addition is four callbacks that write T.json:
`{"gflops": forward GFLOPs at imgsz, "params", "train_images", "epochs": [{"epoch", "train_seconds", "batches",
"images"}]}`,
where train_seconds spans on_train_epoch_start -> on_train_epoch_end (before validation).
"""
from __future__ import annotations

import json
import sys
import time


def main() -> None:
    argv = sys.argv[1:]
    if len(argv) < 2 or argv[0] != "--timing":
        raise SystemExit("usage: peer_ultralytics.py --timing OUT.json train model=... data=...")
    out, args = argv[1], argv[2:]
    sys.argv = ["yolo", *args]  # before the import: ultralytics reads its argv once, when it loads
    from ultralytics.cfg import entrypoint
    from ultralytics.utils.callbacks import base

    record: dict = {"epochs": []}
    state: dict = {}

    def write() -> None:
        with open(out, "w") as f:
            json.dump(record, f, indent=1)

    def on_train_start(trainer) -> None:
        from ultralytics.utils.torch_utils import get_flops, get_num_params  # ultralytics: .venv-peer only
        record["gflops"] = float(get_flops(trainer.model, trainer.args.imgsz))
        record["params"] = int(get_num_params(trainer.model))
        record["train_images"] = len(trainer.train_loader.dataset)

    def on_train_epoch_start(trainer) -> None:
        state["t0"], state["batches"] = time.perf_counter(), 0

    def on_train_batch_end(trainer) -> None:
        state["batches"] += 1

    def on_train_epoch_end(trainer) -> None:
        record["epochs"].append({"epoch": int(trainer.epoch), "train_seconds": time.perf_counter() - state["t0"],
                                 "batches": state["batches"], "images": record["train_images"]})
        write()

    for event, fn in (("on_train_start", on_train_start), ("on_train_epoch_start", on_train_epoch_start),
                      ("on_train_batch_end", on_train_batch_end), ("on_train_epoch_end", on_train_epoch_end)):
        base.default_callbacks[event].append(fn)  # every trainer copies the defaults when it is built
    entrypoint()


if __name__ == "__main__":
    main()
