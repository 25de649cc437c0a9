"""`core.train` with a training loss that turns NaN on one rank (fault injection for tests/test_ddp.py).

torchrun ... tests/core/ddp_nan_train.py TRAIN_ARGS; env NAN_RANK (default 1) and NAN_CALLS (the 1-based
loss calls of that rank that return NaN, e.g. "2,3" or "2-" for every call from the 2nd on).
"""
import os
import sys

from core.loss import ComputeLoss
from core.train_cli import main

_real_call = ComputeLoss.__call__
_calls = 0


def _nan_calls(spec: str, n: int) -> bool:
    if spec.endswith("-"):
        return n >= int(spec[:-1])
    return n in {int(x) for x in spec.split(",") if x}


def _call(self, preds, targets):
    global _calls
    loss, items = _real_call(self, preds, targets)
    if int(os.environ.get("RANK", -1)) == int(os.environ.get("NAN_RANK", 1)):
        _calls += 1
        if _nan_calls(os.environ["NAN_CALLS"], _calls):
            loss = loss * float("nan")
    return loss, items


ComputeLoss.__call__ = _call
sys.exit(main(sys.argv[1:]))
