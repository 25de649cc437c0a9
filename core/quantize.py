"""INT8 .onnx files: onnxruntime static quantization of an exported float32 file, calibrated on training images.

`quantize_onnx(fp32, out, images)` writes a QDQ graph (QuantizeLinear / DequantizeLinear pairs around int8
tensors, which onnxruntime's CPU provider fuses into integer kernels such as QLinearConv):
- weights int8, symmetric, one scale per output channel (per-channel: a pruned or BN-folded conv's channels
  differ in range by orders of magnitude, and one scale per tensor would zero the small ones);
- activations uint8 with a scale and zero point per tensor, from the min and max each tensor reaches on the
  calibration images (MinMax). uint8, not int8: onnxruntime's x86 CPU provider fuses a QDQ conv into QLinearConv
  (and SiLU into QLinearSigmoid and QLinearMul) only for uint8 activations with int8 weights; with int8
  activations every conv stayed a float Conv between DequantizeLinear and QuantizeLinear (measured 2x slower
  than the float32 file);
- the head's output convs and the decode after them stay float32. The file's one output holds box centres
  and sides in pixels (up to the input size) beside probabilities in [0, 1]: one int8 scale for both would
  round every score to a multiple of imgsz / 255 (2.5 at 640 px). The output convs are a few 1x1 convs, a
  small share of the compute.
Calibration images are letterboxed as inference letterboxes them (core.detect.read_letterboxed), spread evenly
over the sorted training images, so the same command picks the same ones.

Whether int8 is faster depends on the CPU and the model: onnxruntime's uint8 x int8 convs use VNNI (AVX512-VNNI or
AVX-VNNI) where the CPU has it and pairs of 16-bit products on AVX2 alone, which can saturate (onnxruntime's
quantization guide suggests reduce_range for such CPUs); narrow convs gain less than wide ones
(bench/results/int8.md measures it).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from core.data.config import load_data_config
from core.data.files import list_image_files
from core.detect import read_letterboxed
from core.onnx_model import INPUT

__all__ = ["DEFAULT_CALIB_IMAGES", "CalibrationError", "calibration_images", "head_tail_nodes", "int8_path",
           "quantize_onnx"]

DEFAULT_CALIB_IMAGES = 100  # onnxruntime's and Ultralytics' examples calibrate on a few hundred; MinMax settles sooner


class CalibrationError(ValueError):
    """No usable calibration images: a bad count, or a data set whose training source has none."""


def int8_path(fp32: str | Path) -> Path:
    """Where the INT8 file of `fp32` goes: model.onnx -> model.int8.onnx, beside it."""
    fp32 = Path(fp32)
    return fp32.with_name(fp32.stem + ".int8.onnx")


def calibration_images(data: str | Path | None, n: int = DEFAULT_CALIB_IMAGES) -> list[str]:
    """`n` training images of the data yaml (None: the built-in set), evenly spread over the sorted list; all
    of them when it has fewer. CalibrationError for n < 1 or a training source without images."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CalibrationError(f"--calib-images {n!r}: must be an integer >= 1")
    cfg = load_data_config(data)
    try:
        files = list_image_files(cfg["train"])
    except FileNotFoundError as e:
        raise CalibrationError(f"{cfg['yaml_file']}: train: {e}") from None
    if not files:
        sources = cfg["train"] if isinstance(cfg["train"], (list, tuple)) else [cfg["train"]]
        raise CalibrationError(f"{cfg['yaml_file']}: train: {', '.join(map(str, sources))} holds no images to "
                               f"calibrate on")
    step = max(len(files) / n, 1.0)
    return [files[int(i * step)] for i in range(min(n, len(files)))]


def head_tail_nodes(graph) -> list[str]:
    """Names of the nodes that turn the last convs' maps into the output (an onnx GraphProto): every node
    from the graph output back to, and including, the first Conv on each path."""
    producer = {out: node for node in graph.node for out in node.output}
    tail, todo, seen = [], [o.name for o in graph.output], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        tail.append(node.name)
        if node.op_type != "Conv":
            todo.extend(node.input)
    return tail


class _Letterboxed:
    """onnxruntime's CalibrationDataReader protocol (get_next -> feed dict, None at the end) over image files,
    each letterboxed to imgsz and fed in batches of the file's fixed batch size."""

    def __init__(self, files: Sequence[str], imgsz: int, batch: int, progress: bool):
        self.files, self.imgsz, self.batch = list(files), imgsz, batch
        self.bar = tqdm(total=len(self.files), desc="int8 calibration", unit="img", disable=not progress, leave=False)
        self.i = 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.files):
            self.bar.close()
            return None
        chunk = self.files[self.i:self.i + self.batch]
        self.i += len(chunk)
        self.bar.update(len(chunk))
        x = np.concatenate([read_letterboxed(f, self.imgsz)[0].numpy() for f in chunk])
        if len(x) < self.batch:  # a fixed-batch file: repeat the last image to fill the batch
            x = np.concatenate([x, np.repeat(x[-1:], self.batch - len(x), 0)])
        return {INPUT: x.astype(np.float32)}

    def __iter__(self):  # newer onnxruntime calibrators may iterate the reader
        return iter(self.get_next, None)


def quantize_onnx(fp32: str | Path, out: str | Path, images: Sequence[str], progress: bool = True) -> Path:
    """Write the INT8 (QDQ) version of the float32 file `fp32` (core.export's contract, batch and size fixed or
    dynamic) to `out`, calibrated on `images`; the metadata (names, stride, imgsz, ...) is carried over."""
    import onnx  # optional packages (the `export` extra): the rest of core imports without them
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not images:
        raise CalibrationError("no calibration images given")
    model = onnx.load(str(fp32))
    if any(p.key == "half" and p.value == "true" for p in model.metadata_props):
        raise ValueError(f"{fp32}: an fp16 file; quantize the float32 export (core.export without --half)")
    meta = {p.key: p.value for p in model.metadata_props}
    if "imgsz" not in meta:
        raise ValueError(f"{fp32}: no imgsz in the ONNX metadata; export it with core.export")
    imgsz = int(json.loads(meta["imgsz"])[0])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value or 1  # a dynamic batch calibrates one image at a time
    reader = type("LetterboxedReader", (_Letterboxed, CalibrationDataReader), {})(images, imgsz, batch, progress)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"  # shapes inferred and graph optimised, as onnxruntime advises before quantizing
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=head_tail_nodes(onnx.load(str(pre)).graph),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    q = onnx.load(str(out))
    del q.metadata_props[:]
    for k, v in meta.items():
        q.metadata_props.add(key=k, value=v)
    onnx.save(q, str(out))
    return out

