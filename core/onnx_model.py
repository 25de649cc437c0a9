"""An exported .onnx file run through onnxruntime, standing in for the eval-mode `Model`.

Contract shared with `core.export` (which writes the file): one input `images` float (B, 3, H, W)
in [0, 1] RGB; one output (B, N, 5 + nc) = the eval model's decoded predictions [cx, cy, w, h,
obj, cls...] in input pixels (what `core.nms.non_max_suppression` consumes). The metadata holds
`names`, `stride` (per level) and `imgsz` [h, w] as JSON strings, `batch`, `dynamic`.
`OnnxModel(x)` returns `(pred, None)` like `Model` in eval mode: there are no raw maps, so no
validation loss.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxModel", "metadata"]

INPUT, OUTPUT = "images", "output0"


def metadata(names: list[str], stride: list[float], imgsz: tuple[int, int], batch: int, dynamic: bool,
             half: bool) -> dict[str, str]:
    """The key/value pairs written into the .onnx file (onnx metadata values are strings)."""
    return {"names": json.dumps(list(names)), "stride": json.dumps([float(s) for s in stride]),
            "imgsz": json.dumps(list(imgsz)), "batch": str(batch), "dynamic": json.dumps(bool(dynamic)),
            "half": json.dumps(bool(half))}


class OnnxModel(nn.Module):
    """onnxruntime session with the eval-model surface: `names`, `nc`, `stride`, `imgsz`, forward -> (pred, None).

    A file exported without --dynamic has a fixed input: batches are run in chunks of its batch size
    (the last one padded), and `fixed_imgsz` tells callers the (h, w) the file accepts.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        super().__init__()
        import onnxruntime as ort  # optional package (the `export` extra): only .onnx files need it

        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), providers=providers or ["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = {"names", "stride", "imgsz"} - set(meta)
        if missing:
            raise ValueError(f"{self.path}: no {sorted(missing)} in the ONNX metadata; export it with core.export")
        self.names = json.loads(meta["names"])
        self.nc = len(self.names)
        self.register_buffer("stride", torch.tensor(json.loads(meta["stride"])), persistent=False)
        self.imgsz = tuple(json.loads(meta["imgsz"]))
        self.dynamic = json.loads(meta.get("dynamic", "false"))
        self.half = json.loads(meta.get("half", "false"))
        self.batch = None if self.dynamic else int(meta.get("batch", 1))
        self.fixed_imgsz = None if self.dynamic else self.imgsz

    def forward(self, x: torch.Tensor):
        x_np = x.detach().cpu().numpy().astype(np.float16 if self.half else np.float32)
        step = self.batch or len(x_np)
        outs = []
        for i in range(0, len(x_np), step):
            chunk = x_np[i:i + step]
            n = len(chunk)
            if n < step:  # a fixed-batch file: pad the last chunk, drop the padding's outputs
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.session.run([OUTPUT], {INPUT: chunk})[0][:n])
        return torch.from_numpy(np.concatenate(outs).astype(np.float32)).to(x.device), None
