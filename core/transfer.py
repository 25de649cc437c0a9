"""Start a model from another's weights: every tensor whose name and shape match is copied.

What does not match (a Detect head for another class count, a layer the yaml changed) keeps its
fresh initialisation. The count is reported like YOLOv5's "Transferred 342/349 items": tensors
copied / tensors in the new model's state_dict (buffers included).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


__all__ = ["transfer_weights"]


def transfer_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """Load the matching tensors of `state` into `model` (cast to its dtypes); returns (copied, total)."""
    own = model.state_dict()
    matched = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own)
