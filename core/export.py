"""`python -m core.export`: a checkpoint -> W.onnx, checked against PyTorch every time.

The exported graph is the fused eval model's first output: decoded predictions (B, N, 5 + nc)
[cx, cy, w, h, obj, cls...] in input pixels, what `core.nms.non_max_suppression` consumes (the
file contract is in `core/onnx_model.py`). A pruned checkpoint is a plain architecture dict plus
weights, so it exports like any other. After writing, `onnx.checker` validates the file and
onnxruntime runs a real image beside the unfused float32 PyTorch model (so BN folding is checked
too): the max abs differences are printed and held to TOLERANCE (TOLERANCE_HALF for an fp16 file):
- obj/cls probabilities: absolute;
- boxes [cx, cy, w, h]: absolute in units of the input size (x and w over its width, y and h over
  its height: the scale of YOLO labels). Not in pixels: float32 cannot hold a pixel to 1e-4 at the
  sizes we run. A box side is (2 sigmoid(t))^2 * anchor, with anchors up to ~160 px at stride 32, so
  the ~1e-6 float32 error a 25-layer network leaves in sigmoid(t) becomes ~1e-4 px, and a pixel value
  near 640 is only stored to 6e-5 (its float32 spacing). PyTorch's own float32 output differs from
  a float64 run by that much (README, "Export": over 1e-4 px at 160 px already), so two correct
  float32 implementations cannot agree to 1e-4 px, while 1e-4 of the image (0.064 px at 640) is met
  with margin and still catches a wrong grid, stride or anchor (those are off by pixels).
- fp16 (`--half`, any device): compared with the same float32 model; float16 stores a value in
  [0.5, 1) to 2.4e-4 and a box coordinate near 640 px to 0.25 px, and rounds every layer's output.
  TOLERANCE_HALF = 1e-2 on both scales.
Either tolerance is raised to FLOOR_FACTOR x PyTorch's own error against a float64 run of the same
image at the file's precision (`float_floor`), where that is larger: an ill-conditioned model (large
activations, e.g. random weights) cannot be computed closer than that by any float32 implementation
(two each e from the exact result differ by up to 2e; x10 leaves room for onnxruntime erring more
than PyTorch on such a model: README, "Export", has the measured ratios). For trained models the
floor is far below 1e-4 and the plain tolerance applies. The floor and the tolerance used are printed.

`--int8` also writes W.int8.onnx beside W.onnx: onnxruntime static quantization (QDQ, per-channel int8
weights) calibrated on `--calib-images` training images (core/quantize.py). It is not held to a tolerance
against PyTorch (int8 rounds every activation to 1/255 of its range): its max differences from the float32
file are printed, and `core.val --weights W.int8.onnx` scores it.

PyTorch's TorchScript-based exporter is used (dynamo=False): the torch.export-based one needs the
extra onnxscript package and gives nothing here for a graph without control flow.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from core.onnx_model import INPUT, OUTPUT, OnnxModel, metadata
from core import argtypes as t
from core.quantize import DEFAULT_CALIB_IMAGES, calibration_images, int8_path, quantize_onnx
from core.checkpoint import load_checkpoint, model_from_checkpoint
from core.cli import main_guard
from core.data.config import load_data_config
from core.data.files import list_image_files
from core.detect import read_letterboxed
from core.device import select_device

__all__ = ["TOLERANCE", "TOLERANCE_HALF", "FLOOR_FACTOR", "ExportError", "export_onnx", "check_onnx", "sample_image",
           "run"]

TOLERANCE = 1e-4       # fp32 onnxruntime vs PyTorch: probabilities, and boxes in units of the input size
TOLERANCE_HALF = 1e-2  # the same for an fp16 file (against the float32 PyTorch model)
FLOOR_FACTOR = 10      # the tolerance is at least this times PyTorch's own error against float64 (module docstring)
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
    import onnx  # optional package (the `export` extra): the rest of core imports without it

    device = next(model.parameters()).device
    stride = int(model.stride.max())
    if imgsz % stride:
        raise ValueError(f"imgsz {imgsz} is not a multiple of the model's max stride {stride}")
    net = copy.deepcopy(model).float().fuse().eval()
    net.model[-1]._grids.clear()  # a cached grid would be traced as a constant of one input size
    wrapper = _Predictions(net.half() if half else net).eval()
    x = torch.zeros(batch, 3, imgsz, imgsz, device=device, dtype=torch.float16 if half else torch.float32)
    if half:
        _check_half(wrapper, x)
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, OUTPUT: {0: "batch", 1: "anchors"}} if dynamic else None
    out = Path(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, see above
        torch.onnx.export(wrapper, x, str(out), dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes=axes, do_constant_folding=True)
    graph = onnx.load(str(out))
    if simplify:
        import onnxslim  # optional package (the `export` extra), for --simplify only

        graph = onnxslim.slim(graph)
    meta = metadata(list(model.names), model.stride.tolist(), (imgsz, imgsz), batch, dynamic, half)
    del graph.metadata_props[:]
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)
    onnx.save(graph, str(out))
    return out


@torch.no_grad()
def _check_half(wrapper: nn.Module, x: torch.Tensor) -> None:
    """Tracing runs the fp16 model once: fail with a clear message where this torch build cannot."""
    try:
        wrapper(x)
    except RuntimeError as e:  # e.g. an older torch: "... not implemented for 'Half'" on CPU
        raise ValueError(f"half=True: this torch ({torch.__version__}) cannot run the model in float16 on "
                         f"{x.device.type} ({str(e).splitlines()[0]}); use a CUDA device or export float32") from None


def _max_errors(got: torch.Tensor, want: torch.Tensor, hw: tuple[int, int]) -> dict[str, float]:
    """Max abs differences of (B, N, 5 + nc) predictions for an (h, w) input: obj/cls; boxes in units of
    the input size (x, w over its width; y, h over its height) and in pixels."""
    diff = (got.double().cpu() - want.double().cpu()).abs()
    h, w = hw
    size = torch.tensor([w, h, w, h], dtype=torch.float64)
    return {"scores": float(diff[..., 4:].max()), "boxes": float((diff[..., :4] / size).max()),
            "boxes_px": float(diff[..., :4].max())}


@torch.no_grad()
def float_floor(reference: nn.Module, x: torch.Tensor, half: bool = False) -> dict[str, float] | None:
    """How far PyTorch itself is from the exact (float64) result on x, in float32 (or float16): the
    closest any other implementation at that precision can be expected to agree with it. None if this
    torch cannot run the model in float16 on x's device."""
    exact = copy.deepcopy(reference).double().eval()(x.double())[0]
    try:
        ours = copy.deepcopy(reference).half().eval()(x.half())[0] if half else reference.float().eval()(x.float())[0]
    except RuntimeError:
        return None
    return _max_errors(ours, exact, tuple(x.shape[-2:]))


@torch.no_grad()
def check_onnx(path: str | Path, reference: nn.Module, image: torch.Tensor) -> dict[str, Any]:
    """onnx.checker, then onnxruntime vs `reference` (float eval model) on `image` (B, 3, H, W) in [0, 1].

    Returns max abs differences {'scores': of obj/cls, 'boxes': of [cx, cy, w, h] in units of the input
    size, 'boxes_px': the same in pixels}, 'floor': PyTorch's own error at the file's precision (see
    float_floor) and 'tolerance': {'scores', 'boxes'} applied; raises ExportError beyond it.
    """
    import onnx  # optional package (the `export` extra)

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: onnx.checker: {e}") from None
    ort_model = OnnxModel(path)
    x = image.expand(ort_model.batch or image.shape[0], -1, -1, -1)
    xd = x.to(next(reference.parameters()).device)
    expected = reference.float().eval()(xd)[0].cpu()
    got = ort_model(x)[0]
    if got.shape != expected.shape:
        raise ExportError(f"{path}: onnxruntime output {tuple(got.shape)} != PyTorch {tuple(expected.shape)}")
    hw = tuple(x.shape[-2:])
    res: dict = _max_errors(got, expected, hw)
    base = TOLERANCE_HALF if ort_model.half else TOLERANCE
    res["floor"] = float_floor(reference, xd, ort_model.half) or {"scores": 0.0, "boxes": 0.0, "boxes_px": 0.0}
    res["tolerance"] = {k: max(base, FLOOR_FACTOR * res["floor"][k]) for k in ("scores", "boxes")}
    if any(res[k] > res["tolerance"][k] for k in ("scores", "boxes")):
        h, w = hw
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {res['scores']:.3g} in scores, "
                          f"{res['boxes']:.3g} of the {w}x{h} input in boxes ({res['boxes_px']:.3g} px); tolerance "
                          f"{res['tolerance']['scores']:.3g} and {res['tolerance']['boxes']:.3g} (PyTorch's own error "
                          f"against float64: {res['floor']['scores']:.3g} and {res['floor']['boxes']:.3g})")
    return res


def sample_image(ckpt: dict, imgsz: int, source: str | None = None) -> torch.Tensor:
    """A real image to check the export on: `source`, else the first val image of the checkpoint's
    training data, else of the built-in dataset; letterboxed to imgsz, (1, 3, imgsz, imgsz) in [0, 1]."""
    if source is None:
        source = list_image_files(load_data_config(_checkpoint_data(ckpt))["val"])[0]
    return read_letterboxed(source, imgsz)[0]


def _checkpoint_data(ckpt: dict) -> str | None:
    """The data yaml the checkpoint was trained on when it is still there, else None (the built-in dataset)."""
    data = (ckpt.get("train_opts") or {}).get("data")
    return data if data and Path(data).is_file() else None


def run(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m core.export",
                                 description="Export a checkpoint to ONNX (decoded predictions, fused, eval) and "
                                             "check it against PyTorch with onnxruntime.")
    ap.add_argument("--weights", type=t.existing_file, required=True, help="checkpoint (.pt), pruned ones included")
    ap.add_argument("--imgsz", type=t.positive_int, default=640, help="square input size")
    ap.add_argument("--batch", type=t.positive_int, default=1, help="batch size of the graph (ignored with --dynamic)")
    ap.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    ap.add_argument("--half", action="store_true",
                    help=f"fp16 weights, input and output (checked against the float32 model to {TOLERANCE_HALF:g})")
    ap.add_argument("--simplify", action="store_true", help="simplify the graph with onnxslim")
    ap.add_argument("--opset", type=t.positive_int, default=DEFAULT_OPSET)
    ap.add_argument("--device", type=t.device, default="cpu")
    ap.add_argument("--source", default=None, help="image for the check (default: first val image of the "
                    "checkpoint's data, else of the built-in dataset)")
    ap.add_argument("--out", default=None, help="output path (default: the weights with .onnx)")
    ap.add_argument("--int8", action="store_true", help="also write OUT.int8.onnx: onnxruntime static int8 "
                    "quantization (QDQ, per-channel weights; the head's output convs and decode stay float32), "
                    "calibrated on training images; score it with core.val")
    ap.add_argument("--calib-images", type=t.positive_int, default=DEFAULT_CALIB_IMAGES,
                    help="training images to calibrate --int8 on, evenly spread over the sorted training set")
    ap.add_argument("--data", type=t.existing_file, default=None, help="data yaml whose training images calibrate "
                    "--int8 (default: the checkpoint's training data, else the built-in dataset)")
    args = ap.parse_args(argv)
    if args.int8 and args.half:
        ap.error("--int8 quantizes the float32 file: drop --half")
    ckpt = load_checkpoint(args.weights)
    calib_data = args.data or _checkpoint_data(ckpt)
    calib = calibration_images(calib_data, args.calib_images) if args.int8 else []  # bad data fails before exporting
    model = model_from_checkpoint(ckpt).to(select_device(args.device))
    out = Path(args.out or Path(args.weights).with_suffix(".onnx"))
    t0 = time.time()
    export_onnx(model, out, args.imgsz, args.batch, args.dynamic, args.half, args.simplify, args.opset)
    t1 = time.time()
    d = check_onnx(out, model, sample_image(ckpt, args.imgsz, args.source))
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB, opset {args.opset}, {t1 - t0:.1f} s); onnx.checker "
          f"passed; onnxruntime vs PyTorch (float32) max abs diff: scores {d['scores']:.2e}, boxes {d['boxes']:.2e} "
          f"of the input size ({d['boxes_px']:.2e} px); tolerance {d['tolerance']['scores']:.1e} / "
          f"{d['tolerance']['boxes']:.1e} (PyTorch's own {'float16' if args.half else 'float32'} error against "
          f"float64: {d['floor']['scores']:.1e} / {d['floor']['boxes']:.1e})")
    plain = TOLERANCE_HALF if args.half else TOLERANCE
    if max(d["floor"]["scores"], d["floor"]["boxes"]) > plain:
        print(f"note: PyTorch itself is off by more than {plain:g} in {'float16' if args.half else 'float32'} on this "
              f"image, so the file matches PyTorch only as closely as that precision allows; check its accuracy "
              f"with python -m core.val --weights {out}")
    if args.int8:
        export_int8(out, calib, calib_data, sample_image(ckpt, args.imgsz, args.source))
    return out


def export_int8(fp32: Path, images: list[str], data: str | None, image: torch.Tensor) -> Path:
    """--int8: quantize the checked float32 file on `images` (from `data`), print how far its outputs move on
    the check image."""
    out = int8_path(fp32)
    t0 = time.time()
    quantize_onnx(fp32, out, images)
    d = _max_errors(OnnxModel(out)(image)[0], OnnxModel(fp32)(image)[0], tuple(image.shape[-2:]))
    print(f"int8: wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(images)} calibration images from "
          f"{data or 'the built-in dataset'}, {time.time() - t0:.1f} s); INT8 vs float32 onnxruntime max abs diff on "
          f"the check image: scores {d['scores']:.2e}, boxes {d['boxes']:.2e} of the input size; no tolerance "
          f"applies: score it with python -m core.val --weights {out}" + (f" --data {data}" if data else ""))
    return out


@main_guard("core.export")
def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
