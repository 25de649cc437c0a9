"""`python -m core.export`: a checkpoint -> W.onnx, checked against PyTorch every time.

The exported graph is the fused eval model's first output: decoded predictions (B, N, 5 + nc)
[cx, cy, w, h, obj, cls...] in input pixels, what `core.nms.non_max_suppression` consumes (the
file contract is in `core/onnx_model.py`). A pruned checkpoint is a plain architecture dict plus
weights, so it exports like any other. After writing, `onnx.checker` validates the file and
onnxruntime runs a real image beside the unfused PyTorch model (so BN folding is checked too):
the max abs differences are printed and must stay within TOLERANCE (fp32; TOLERANCE_HALF for fp16)
- for obj/cls probabilities: absolute;
- for the boxes [cx, cy, w, h]: relative to the largest box value (~ the image size). Pixels
  carry float32's relative precision: PyTorch's own float32 boxes differ from float64 by ~4e-6 of
  their scale (2e-3 px on 540 px boxes), so an absolute 1e-4 px would fail correct exports.

PyTorch's TorchScript-based exporter is used (dynamo=False): the torch.export-based one needs the
extra onnxscript package and gives nothing here for a graph without control flow.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from core.onnx_model import INPUT, OUTPUT, OnnxModel, metadata
from core import argtypes as t
from core.cli import main_guard

TOLERANCE = 1e-4       # fp32 onnxruntime vs PyTorch: probabilities absolute, boxes relative to their scale
TOLERANCE_HALF = 1e-2  # the same for fp16
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """The exported file failed onnx.checker or disagrees with PyTorch beyond the tolerance."""


class _Predictions(nn.Module):
    """The eval model without its raw maps: one output tensor for the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def export_onnx(model: nn.Module, out: str | Path, imgsz: int = 640, batch: int = 1, dynamic: bool = False,
                half: bool = False, simplify: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` (a float eval Model) fused to `out`; its metadata records names, stride, imgsz."""
    import onnx

    device = next(model.parameters()).device
    if half and device.type != "cuda":
        raise ValueError("half=True needs a CUDA device: PyTorch cannot trace fp16 convolutions on CPU")
    stride = int(model.stride.max())
    if imgsz % stride:
        raise ValueError(f"imgsz {imgsz} is not a multiple of the model's max stride {stride}")
    net = copy.deepcopy(model).float().fuse().eval()
    net.model[-1]._grids.clear()  # a cached grid would be traced as a constant of one input size
    wrapper = _Predictions(net.half() if half else net).eval()
    x = torch.zeros(batch, 3, imgsz, imgsz, device=device, dtype=torch.float16 if half else torch.float32)
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch", 1: "anchors"}} if dynamic else None
    out = Path(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, see above
        torch.onnx.export(wrapper, x, str(out), dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes=axes, do_constant_folding=True)
    graph = onnx.load(str(out))
    if simplify:
        import onnxslim

        graph = onnxslim.slim(graph)
    meta = metadata(list(model.names), model.stride.tolist(), (imgsz, imgsz), batch, dynamic, half)
    del graph.metadata_props[:]
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)
    onnx.save(graph, str(out))
    return out


@torch.no_grad()
def check_onnx(path: str | Path, reference: nn.Module, image: torch.Tensor) -> dict[str, float]:
    """onnx.checker, then onnxruntime vs `reference` (float eval model) on `image` (B, 3, H, W) in [0, 1].

    Returns {'boxes': max abs diff in pixels, 'boxes_rel': that / the largest box value,
    'scores': max abs diff of obj/cls}; raises ExportError beyond the tolerance.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: onnx.checker: {e}") from None
    ort_model = OnnxModel(path)
    x = image.expand(ort_model.batch or image.shape[0], -1, -1, -1)
    expected = reference.float().eval()(x.to(next(reference.parameters()).device))[0].cpu()
    got = ort_model(x)[0]
    if got.shape != expected.shape:
        raise ExportError(f"{path}: onnxruntime output {tuple(got.shape)} != PyTorch {tuple(expected.shape)}")
    diff = (got - expected).abs()
    box_scale = max(float(expected[..., :4].abs().max()), 1.0)
    res = {"boxes": float(diff[..., :4].max()), "scores": float(diff[..., 4:].max())}
    res["boxes_rel"] = res["boxes"] / box_scale
    tol = TOLERANCE_HALF if ort_model.half else TOLERANCE
    if not (res["boxes_rel"] <= tol and res["scores"] <= tol):
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {res['scores']:.3g} in scores, "
                          f"{res['boxes']:.3g} px = {res['boxes_rel']:.3g} of the box scale {box_scale:.4g} "
                          f"(tolerance {tol:g})")
    return res


def sample_image(ckpt: dict, imgsz: int, source: str | None = None) -> torch.Tensor:
    """A real image to check the export on: `source`, else the first val image of the checkpoint's
    training data, else of the built-in dataset; letterboxed to imgsz, (1, 3, imgsz, imgsz) in [0, 1]."""
    from core.data.config import load_data_config
    from core.data.files import list_image_files
    from core.detect import read_letterboxed

    if source is None:
        data = (ckpt.get("train_opts") or {}).get("data")
        data = data if data and Path(data).is_file() else None
        source = list_image_files(load_data_config(data)["val"])[0]
    return read_letterboxed(source, imgsz)[0]


def run(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m core.export",
                                 description="Export a checkpoint to ONNX (decoded predictions, fused, eval) and "
                                             "check it against PyTorch with onnxruntime.")
    ap.add_argument("--weights", type=t.existing_file, required=True, help="checkpoint (.pt), pruned ones included")
    ap.add_argument("--imgsz", type=t.positive_int, default=640, help="square input size")
    ap.add_argument("--batch", type=t.positive_int, default=1, help="batch size of the graph (ignored with --dynamic)")
    ap.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    ap.add_argument("--half", action="store_true", help="fp16 weights and input (CUDA device only)")
    ap.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    ap.add_argument("--opset", type=t.positive_int, default=DEFAULT_OPSET)
    ap.add_argument("--device", type=t.device, default="cpu")
    ap.add_argument("--source", default=None, help="image for the check (default: first val image of the "
                    "checkpoint's data, else of the built-in dataset)")
    ap.add_argument("--out", default=None, help="output path (default: the weights with .onnx)")
    args = ap.parse_args(argv)

    from core.checkpoint import load_checkpoint, model_from_checkpoint
    from core.device import select_device

    ckpt = load_checkpoint(args.weights)
    model = model_from_checkpoint(ckpt).to(select_device(args.device))
    out = Path(args.out or Path(args.weights).with_suffix(".onnx"))
    t0 = time.time()
    export_onnx(model, out, args.imgsz, args.batch, args.dynamic, args.half, args.simplify, args.opset)
    t1 = time.time()
    d = check_onnx(out, model, sample_image(ckpt, args.imgsz, args.source))
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB, opset {args.opset}, {t1 - t0:.1f} s); onnx.checker "
          f"passed; onnxruntime vs PyTorch max abs diff: scores {d['scores']:.2e}, boxes {d['boxes']:.2e} px "
          f"({d['boxes_rel']:.2e} of their scale)")
    return out


@main_guard("core.export")
def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
