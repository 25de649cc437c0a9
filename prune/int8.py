"""The pruning table's INT8 column: the last stage quantized (core.quantize), scored and timed beside the others.

When the stages are exported for the onnxruntime latency, the last stage's float32 file is quantized to
run_dir/int8/<stage>.int8.onnx (calibrated on the training images), validated at --imgsz on the val set and
timed in the same interleaved loop as every stage; int8.json keeps its figures. The table shows it as a column
after the stages (`with_int8`), with each stage's ONNX file size; prune_results.csv keeps one row per stage.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from torch import nn

from core.atomic import atomic_write
from core.export import export_onnx
from core.onnx_model import OnnxModel
from core.quantize import DEFAULT_CALIB_IMAGES, calibration_images, quantize_onnx
from core.val import validate

__all__ = ["INT8_JSON", "quantize_stage", "with_int8", "write_int8"]

INT8_JSON = "int8.json"


def quantize_stage(model: nn.Module, fp32: Path, size: int, imgsz: int, data: str | None, run_dir: Path) -> dict[int, Path]:
    """{size: the INT8 file of `fp32` (exported at the latency size), imgsz: one at the validation size}."""
    out = Path(run_dir) / "int8"
    out.mkdir(exist_ok=True)
    images = calibration_images(data, DEFAULT_CALIB_IMAGES)
    files = {size: quantize_onnx(fp32, out / f"{fp32.stem}.int8.onnx", images, progress=False)}
    if imgsz != size:
        fp32_val = export_onnx(model, out / f"{fp32.stem}_{imgsz}.onnx", imgsz=imgsz)
        files[imgsz] = quantize_onnx(fp32_val, out / f"{fp32.stem}_{imgsz}.int8.onnx", images, progress=False)
    return files


def write_int8(run_dir: Path, stage: str, files: dict[int, Path], imgsz: int, size: int, latency, val_loader,
               names) -> dict:
    """Validate the INT8 file at imgsz; int8.json: its metrics, file size and latency (median, p25, p75)."""
    m = validate(OnnxModel(files[imgsz]), val_loader, names=names, progress=False)
    row = {"stage": "int8", "from": stage, **{k: float(m[k]) for k in ("P", "R", "mAP50", "mAP50-95", "fitness")},
           "onnx_MB": files[size].stat().st_size / 1e6}
    if latency is not None:
        row.update(onnx_latency_ms=latency.median, onnx_latency_p25_ms=latency.p25, onnx_latency_p75_ms=latency.p75)
    atomic_write(Path(run_dir) / INT8_JSON, json.dumps(row, indent=1))
    return row


def with_int8(df: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The table to show: each stage's float32 ONNX file size, then the INT8 column when the run has one."""
    run_dir = Path(run_dir)
    path = run_dir / INT8_JSON
    if not path.is_file():
        return df
    df = df.copy()
    df["onnx_MB"] = [_size_mb(run_dir / "onnx" / f"{s}.onnx") for s in df["stage"]]
    row = json.loads(path.read_text())
    last = df[df["stage"] == row.pop("from")]
    same = {k: last[k].iloc[0] for k in ("params", "GFLOPs", "imgsz", "channels_kept", "channels_pruned",
                                          "prune_ratio") if k in df and len(last)}  # the same network
    return pd.concat([df, pd.DataFrame([{**same, **row}])], ignore_index=True)


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6 if path.is_file() else math.nan
