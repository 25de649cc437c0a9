"""`python -m bench.int8`: float32 vs INT8 onnxruntime on this CPU: mAP, latency with its spread, file size.

One trained checkpoint (`--weights`; without it yolov5-cpu is trained `--epochs` on the data at `--imgsz`, reused
when its run folder already has best.pt) is exported with `core.export` (float32, checked against PyTorch) and
quantized with `core.quantize` (`--calib-images` training images) at `--imgsz` and at each `--latency-imgsz`.
Both files are validated at `--imgsz` by core.val.validate on the data's val set, and every file is timed batch 1
with `--threads` onnxruntime threads, all in one interleaved loop (prune.measure.cpu_latency: median and
quartiles of `--runs` rounds). The table goes to bench/results/int8.md; whether INT8 pays depends on the CPU's
int8 dot-product instructions (the machine line names avx512_vnni where the CPU has it).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from bench.record import command_line, machine, markdown_table, record, write_json
from core import argtypes as t
from core.checkpoint import load_checkpoint, model_from_checkpoint
from core.cli import main_guard
from core.data.config import load_data_config
from core.data.loader import create_dataloader
from core.export import check_onnx, export_onnx, sample_image
from core.hyp import load_hyp
from core.onnx_model import OnnxModel
from core.quantize import DEFAULT_CALIB_IMAGES, calibration_images, int8_path, quantize_onnx
from core.train import TrainOptions, fit
from core.val import validate
from prune.measure import cpu_latency

LOGGER = logging.getLogger(__name__)
MODEL = "studies/models/yolov5-cpu.yaml"


def trained_weights(args: argparse.Namespace) -> Path:
    """--weights, else yolov5-cpu trained here (reused when OUT/train/base has best.pt)."""
    if args.weights:
        return Path(args.weights)
    best = Path(args.out) / "train" / "base" / "best.pt"
    if not best.is_file():
        opts = TrainOptions(epochs=args.epochs, imgsz=args.imgsz, batch_size=16, workers=1, cache="ram",
                            project=str(Path(args.out) / "train"), name="base", exist_ok=True, plots=False,
                            tensorboard="off")
        fit(args.data, MODEL, None, opts)
    return best


def export_pair(ckpt: dict, model, out: Path, imgsz: int, images: list[str], progress: bool) -> tuple[Path, Path]:
    """(float32 file checked against PyTorch, its INT8 file) at imgsz."""
    fp32 = export_onnx(model, out / f"model_{imgsz}.onnx", imgsz=imgsz)
    check_onnx(fp32, model, sample_image(ckpt, imgsz))
    return fp32, quantize_onnx(fp32, int8_path(fp32), images, progress)


def measure(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = trained_weights(args)
    ckpt = load_checkpoint(weights)
    model = model_from_checkpoint(ckpt).eval()
    images = calibration_images(args.data, args.calib_images)
    sizes = sorted({args.imgsz, *args.latency_imgsz})
    files = {s: export_pair(ckpt, model, out, s, images, args.progress) for s in sizes}
    data = load_data_config(args.data)
    loader, _ = create_dataloader(data["val"], args.imgsz, 32, load_hyp(), augment=False, workers=0,
                                  nc=data["nc"], prefix="val: ")
    fp32, int8 = files[args.imgsz]
    maps = {kind: validate(OnnxModel(path), loader, names=data["names"], progress=args.progress)
            for kind, path in (("fp32", fp32), ("int8", int8))}
    onnx = {f"{kind}@{s}": path for s, pair in files.items() for kind, path in zip(("fp32", "int8"), pair)}
    lat = cpu_latency({}, args.imgsz, threads=args.threads, runs=args.runs, onnx=onnx)  # each fed its own size
    latency = {s: {kind: {"median": lat[f"{kind}@{s}"].median, "p25": lat[f"{kind}@{s}"].p25,
                          "p75": lat[f"{kind}@{s}"].p75} for kind in ("fp32", "int8")} for s in sizes}
    return {"weights": str(weights), "imgsz": args.imgsz, "calib_images": len(images), "threads": args.threads,
            "runs": args.runs, "latency": latency,
            "files_MB": {s: {"fp32": f.stat().st_size / 1e6, "int8": q.stat().st_size / 1e6} for s, (f, q) in files.items()},
            "metrics": {k: {m: float(v[m]) for m in ("P", "R", "mAP50", "mAP50-95")} for k, v in maps.items()}}


def table(r: dict) -> str:
    sizes = sorted(r["latency"], key=int)
    header = ["", f"mAP50-95 ({r['imgsz']} px)", "mAP50", "file MB"] + \
        [f"ORT latency {s} px, ms: median (p25-p75)" for s in sizes]
    rows = []
    for kind in ("fp32", "int8"):
        m, lat = r["metrics"][kind], [r["latency"][s][kind] for s in sizes]
        rows.append([kind.upper() if kind == "int8" else "float32", f"{m['mAP50-95']:.4f}", f"{m['mAP50']:.4f}",
                     f"{r['files_MB'][r['imgsz']][kind]:.2f}",
                     *(f"{x['median']:.2f} ({x['p25']:.2f}-{x['p75']:.2f})" for x in lat)])
    ratio = [f"{r['latency'][s]['fp32']['median'] / r['latency'][s]['int8']['median']:.2f}x" for s in sizes]
    rows.append(["INT8 speedup (fp32 / int8 median)", "", "", "", *ratio])
    note = (f"\n\n{r['calib_images']} calibration images; batch 1, {r['threads']} onnxruntime thread(s), {r['runs']} "
            f"interleaved rounds after 3 warm-up rounds; weights {r['weights']}.")
    return markdown_table(header, rows) + note


@main_guard("bench.int8")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.int8", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=t.existing_file, default=None, help="checkpoint (default: train yolov5-cpu)")
    p.add_argument("--data", type=t.existing_file, default=None, help="data yaml (default: the built-in dataset)")
    p.add_argument("--epochs", type=t.positive_int, default=30, help="training epochs without --weights")
    p.add_argument("--imgsz", type=t.positive_int, default=160, help="size of the mAP comparison")
    p.add_argument("--latency-imgsz", type=t.positive_int, nargs="*", default=[640], help="more latency sizes")
    p.add_argument("--calib-images", type=t.positive_int, default=DEFAULT_CALIB_IMAGES)
    p.add_argument("--threads", type=t.positive_int, default=1)
    p.add_argument("--runs", type=t.positive_int, default=60)
    p.add_argument("--out", default="runs/bench-int8")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-record", action="store_true", help="do not append the table to bench/results/int8.md")
    args = p.parse_args(argv)
    meta = machine()
    r = measure(args)
    text = table(r)
    print(text)
    write_json(r, Path(args.out) / "int8.json")
    if not args.no_record:
        record("int8", text, meta, command_line("bench.int8", argv))
    print(f"files: {args.out}/model_*.onnx, model_*.int8.onnx; figures: {args.out}/int8.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
