"""`python -m bench.use` (make bench-use): every figure of the README's "From experiment to use" section
from one command on a fresh clone. A benchmark, not a test.

What it does, all on data generated for it and used for nothing else:
- a held-out set (synthetic shapes, seed 777: 6 classes, 500 train / 150 val images of 256 px) and a
  transfer set (seed 778: 4 of those classes, 200 / 60 images), both under datasets/;
- two models trained on the held-out set (`--model`, `--epochs`, `--imgsz`, batch, seeds 0 and 1): the
  checkpoints the other phases use;
- export: seed 0's best.pt to ONNX at `--imgsz` and at 640 px, float32 and `--half`; onnxruntime vs PyTorch
  on the first `--check-images` val images (max abs differences, and PyTorch's own error against float64);
- validation of the .pt beside the .onnx files (`core.val --weights W.onnx`: the same metrics);
- CPU latency, batch 1, one thread, interleaved: PyTorch (fused) vs onnxruntime fp32 and fp16;
- TTA and ensembles: `core.val` with `--augment`, with both seeds' weights, both, and at a larger size;
  time per image (forward + NMS at val's conf 0.001, batch 1, one thread, the cases interleaved image by
  image over `--time-images` val images, median);
- transfer: seed 0's best.pt trained `--transfer-epochs` on the 4-class set with `--freeze 10`, without
  freezing, and from scratch (same epochs): the "Transferred X/Y items" count and the best mAP50-95;
- detect: `core.detect` with the fp32 .onnx over the held-out val images, `--save-txt`.

Each phase's result is stored in OUT/use.json as soon as it is measured; a rerun (after an interruption)
skips what is stored and resumes an unfinished training from its last.pt. `--fresh` starts over. The tables
are appended to bench/results/use.md (`--no-record`: not), the export and latency figures to the README's
headline.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bench.record import command_line, machine, record
from core import argtypes as t
from core.atomic import atomic_write
from core.checkpoint import model_from_checkpoint
from core.cli import main_guard
from core.data.config import load_data_config
from core.data.files import list_image_files
from core.detect import read_letterboxed
from core.detect import run as detect
from core.ensemble import load_for_inference
from core.export import ExportError, check_onnx, export_onnx
from core.nms import non_max_suppression
from core.train import TrainOptions, fit
from core.val import run as val
from prune.measure import cpu_latency_ms

LOGGER = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
HELDOUT = {"seed": 777, "n_train": 500, "n_val": 150, "imgsz": 256}  # used by this benchmark only
TRANSFER = {"seed": 778, "n_train": 200, "n_val": 60, "imgsz": 256}
HELDOUT_NAMES = ("circle", "square", "triangle", "star", "cross", "ring")
TRANSFER_NAMES = ("circle", "square", "triangle", "star")
SEEDS = (0, 1)


@dataclass
class UseBenchOptions:
    out: Path = Path("runs/bench-use")
    model: str = "studies/models/yolov5-cpu.yaml"
    epochs: int = 20
    transfer_epochs: int = 10
    imgsz: int = 160
    large_imgsz: int = 224       # TTA / validation above the training size
    export_imgsz: int = 640      # the second export and latency size
    batch: int = 16
    workers: int = 1
    check_images: int = 8
    time_images: int = 40
    latency_runs: int = 60
    fresh: bool = False
    progress: bool = True
    record: bool = True  # append the tables to bench/results/use.md


class Phases:
    """Results by phase name, kept in one json file and written after every phase (so a rerun skips them)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        if name in self.data:
            LOGGER.info(f"--- {name}: stored in {self.path}, skipped")
            return self.data[name]["result"]
        LOGGER.info(f"--- {name}")
        t0 = time.perf_counter()
        result = fn()
        self.data[name] = {"result": result, "seconds": time.perf_counter() - t0}
        atomic_write(self.path, json.dumps(self.data, indent=1, default=str))
        return result


def data_yaml(out: Path, name: str, names: Sequence[str], synthetic: dict) -> Path:
    """A data yaml under out/data whose synthetic section generates the set under datasets/ on first use."""
    root = REPO / "datasets" / f"use-{name}-{synthetic['seed']}"
    lines = [f"path: {root}", "train: images/train",
             "val: images/val", "names:"] + [f"  {i}: {n}" for i, n in enumerate(names)]
    lines += ["synthetic:"] + [f"  {k}: {v}" for k, v in synthetic.items()]
    path = out / "data" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


class _Messages(logging.Handler):
    """Collects log messages that start with a prefix (the trainer's "Transferred X/Y items")."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.messages = prefix, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.messages.append(record.getMessage())


def train(o: UseBenchOptions, name: str, data: Path, model: str, epochs: int, seed: int, freeze: int = 0) -> dict:
    """core.train into OUT/train/<name> (an interrupted run resumes from its last.pt); best mAP and log lines."""

    last = o.out / "train" / name / "last.pt"
    opts = TrainOptions(epochs=epochs, batch_size=o.batch, imgsz=o.imgsz, workers=o.workers, seed=seed,
                        freeze=freeze, project=str(o.out / "train"), name=name, exist_ok=True, progress=o.progress,
                        resume=str(last) if last.exists() else False)
    messages = _Messages("Transferred")
    logging.getLogger("core.train").addHandler(messages)
    try:
        res = fit(str(data), model, None, opts)
    finally:
        logging.getLogger("core.train").removeHandler(messages)
    return {"best": str(res.save_dir / "best.pt"), "mAP50-95": float(res.best.get("mAP50-95", float("nan"))),
            "mAP50": float(res.best.get("mAP50", float("nan"))), "epochs": len(res.history),
            "transferred": messages.messages[0] if messages.messages else None}


def export_checks(o: UseBenchOptions, weights: str, data: Path) -> dict:
    """Export at two sizes, fp32 and fp16; max differences from PyTorch over the first val images."""

    model = model_from_checkpoint(weights)
    images = list_image_files(load_data_config(data)["val"])[:o.check_images]
    rows = {}
    for size in (o.imgsz, o.export_imgsz):
        for half in (False, True):
            path = Path(weights).with_name(f"best-{size}{'-fp16' if half else ''}.onnx")
            export_onnx(model, path, size, half=half)
            worst: dict[str, float] = {}
            try:
                for f in images:
                    d = check_onnx(path, model, read_letterboxed(f, size)[0])
                    for k in ("scores", "boxes", "boxes_px"):
                        worst[k] = max(worst.get(k, 0.0), d[k])
                        worst[f"floor_{k}"] = max(worst.get(f"floor_{k}", 0.0), d["floor"][k])
                    worst["tolerance_boxes"] = max(worst.get("tolerance_boxes", 0.0), d["tolerance"]["boxes"])
                worst["passed"] = True
            except ExportError as e:
                worst.update(passed=False, error=str(e))
            rows[path.name] = {"path": str(path), "imgsz": size, "half": half, "MB": path.stat().st_size / 1e6,
                               **worst}
    return rows


def val_metrics(o: UseBenchOptions, weights: Sequence[str], data: Path, imgsz: int, augment: bool = False) -> dict:
    """`python -m core.val --weights ... --data ... --imgsz ... [--augment]`: the headline metrics."""

    argv = ["--weights", *weights, "--data", str(data), "--imgsz", str(imgsz), "--workers", str(o.workers)]
    m = val(argv + (["--augment"] if augment else []))
    return {k: float(m[k]) for k in ("P", "R", "mAP50", "mAP50-95")}


@torch.no_grad()
def per_image_ms(o: UseBenchOptions, cases: dict[str, tuple[Sequence[str], bool]], data: Path) -> dict:
    """Median ms per image of forward + NMS (conf 0.001, iou 0.6: val's), batch 1, one torch thread; the
    cases interleaved image by image so that a change of load affects them alike."""

    models = {name: load_for_inference(w, "cpu", augment=aug) for name, (w, aug) in cases.items()}
    files = list_image_files(load_data_config(data)["val"])[:o.time_images + 2]
    images = [read_letterboxed(f, o.imgsz)[0] for f in files]
    times: dict[str, list[float]] = {name: [] for name in models}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, x in enumerate(images):
            for name, model in models.items():
                t0 = time.perf_counter()
                non_max_suppression(model(x)[0], 0.001, 0.6)
                if i >= 2:  # the first two images warm up
                    times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return {name: 1000 * statistics.median(v) for name, v in times.items()}


def latency(o: UseBenchOptions, weights: str, exports: dict) -> dict:
    """PyTorch (fused) vs onnxruntime fp32 / fp16, batch 1, one thread, interleaved (prune.measure)."""

    model = model_from_checkpoint(weights)
    out = {}
    for size in (o.imgsz, o.export_imgsz):
        onnx = {f"onnxruntime{' fp16' if e['half'] else ''}": e["path"] for e in exports.values() if e["imgsz"] == size}
        out[str(size)] = cpu_latency_ms({"pytorch": model}, size, threads=1, runs=o.latency_runs, onnx=onnx)
    return out


def detect_files(o: UseBenchOptions, weights: str, data: Path) -> dict:
    """`python -m core.detect --weights W.onnx --source VAL --save-txt`: images and label files written."""

    source = load_data_config(data)["val"][0]
    t0 = time.perf_counter()
    results = detect(["--weights", weights, "--source", source, "--imgsz", str(o.imgsz), "--save-txt",
                      "--project", str(o.out / "detect"), "--name", "exp", "--exist-ok"])
    seconds = time.perf_counter() - t0
    out_dir = o.out / "detect" / "exp"
    return {"images": len(results), "detections": int(sum(len(r["detections"]) for r in results)),
            "drawn": len([p for p in out_dir.iterdir() if p.is_file()]),
            "label_files": len(list((out_dir / "labels").glob("*.txt"))), "seconds": seconds, "dir": str(out_dir)}


def run(o: UseBenchOptions) -> dict:
    """All phases; returns the stored results (OUT/use.json)."""
    if o.fresh:
        shutil.rmtree(o.out, ignore_errors=True)  # trainings, exports and detections too (datasets/ stays)
    o.out.mkdir(parents=True, exist_ok=True)
    phase = Phases(o.out / "use.json")
    phase.data["meta"] = {"result": {**machine(), "torch": torch.__version__, "options": asdict(o)}, "seconds": 0.0}
    ho = data_yaml(o.out, "heldout", HELDOUT_NAMES, HELDOUT)
    tr = data_yaml(o.out, "transfer", TRANSFER_NAMES, TRANSFER)

    runs = {s: phase(f"train seed {s}", lambda s=s: train(o, f"seed{s}", ho, o.model, o.epochs, s)) for s in SEEDS}
    w0, w1 = runs[0]["best"], runs[1]["best"]
    exports = phase("export", lambda: export_checks(o, w0, ho))
    onnx32 = next(e["path"] for e in exports.values() if e["imgsz"] == o.imgsz and not e["half"])
    onnx16 = next(e["path"] for e in exports.values() if e["imgsz"] == o.imgsz and e["half"])
    phase("val pt vs onnx", lambda: {"pt": val_metrics(o, [w0], ho, o.imgsz), "onnx": val_metrics(o, [onnx32], ho, o.imgsz),
                                     "onnx fp16": val_metrics(o, [onnx16], ho, o.imgsz)})
    phase("latency", lambda: latency(o, w0, exports))
    cases = {"seed 0": ([w0], False), "seed 0 --augment": ([w0], True), "seed 1": ([w1], False),
             "seed 1 --augment": ([w1], True), "seed 0 + seed 1": ([w0, w1], False),
             "seed 0 + seed 1 --augment": ([w0, w1], True)}
    phase("tta and ensembles", lambda: {
        **{name: val_metrics(o, w, ho, o.imgsz, aug) for name, (w, aug) in cases.items()},
        **{f"{name} @{o.large_imgsz}": val_metrics(o, w, ho, o.large_imgsz, aug)
           for name, (w, aug) in list(cases.items())[:2]}})
    phase("time per image", lambda: per_image_ms(o, cases, ho))
    phase("transfer --freeze 10", lambda: train(o, "transfer-freeze10", tr, w0, o.transfer_epochs, 0, freeze=10))
    phase("transfer", lambda: train(o, "transfer", tr, w0, o.transfer_epochs, 0))
    phase("transfer scratch", lambda: train(o, "transfer-scratch", tr, o.model, o.transfer_epochs, 0))
    phase("detect", lambda: detect_files(o, onnx32, ho))
    atomic_write(phase.path, json.dumps(phase.data, indent=1, default=str))
    return {k: v["result"] for k, v in phase.data.items()}


def report(r: dict) -> str:
    """The markdown tables of a result (a pure function of use.json's results)."""
    m, o = r["meta"], r["meta"]["options"]
    simd = m.get("simd") or "?"
    lines = [f"{m['date'][:10]}, {m.get('cpu', '?')} ({simd}; AVX-512: {'yes' if 'avx512f' in simd else 'no'}), "
             f"{m['cpus']} CPUs, torch {m['torch']}; {o['model']}, {o['epochs']} epochs at {o['imgsz']} px",
             "", "| model | epochs | best mAP50 | best mAP50-95 |", "|---|---|---|---|"]
    for s in SEEDS:
        t_ = r[f"train seed {s}"]
        lines.append(f"| seed {s} | {t_['epochs']} | {t_['mAP50']:.4f} | {t_['mAP50-95']:.4f} |")
    lines += ["", "Export check, seed 0 (max over the first val images): onnxruntime vs PyTorch float32",
              "", "| file | MB | passed | scores | boxes, of the input | boxes, px | PyTorch vs float64: boxes, px |",
              "|---|---|---|---|---|---|---|"]
    for name, e in r["export"].items():
        lines.append(f"| {name} | {e['MB']:.2f} | {'yes' if e['passed'] else 'NO'} | {e.get('scores', float('nan')):.1e} | "
                     f"{e.get('boxes', float('nan')):.1e} | {e.get('boxes_px', float('nan')):.1e} | "
                     f"{e.get('floor_boxes_px', float('nan')):.1e} |")
    lines += ["", f"| core.val (seed 0, {o['imgsz']} px) | P | R | mAP50 | mAP50-95 |", "|---|---|---|---|---|"]
    for name, v in r["val pt vs onnx"].items():
        lines.append(f"| {name} | {v['P']:.4f} | {v['R']:.4f} | {v['mAP50']:.4f} | {v['mAP50-95']:.4f} |")
    lines += ["", "| latency, batch 1, 1 thread (median ms) | " + " | ".join(r["latency"][str(o['imgsz'])]) + " |",
              "|---" * (1 + len(r["latency"][str(o['imgsz'])])) + "|"]
    for size, v in r["latency"].items():
        lines.append(f"| {size} px | " + " | ".join(f"{ms:.1f} ({v['pytorch'] / ms:.2f}x)" for ms in v.values()) + " |")
    per_image = r["time per image"]
    base_ms = per_image["seed 0"]
    lines += ["", "| core.val --data held-out --weights ... | mAP50 | mAP50-95 | time per image (forward + NMS) |",
              "|---|---|---|---|"]
    for name, v in r["tta and ensembles"].items():
        ms = per_image.get(name)
        cost = "" if ms is None else f"{ms / base_ms:.2f}x" + (f" ({ms:.1f} ms)" if name == "seed 0" else "")
        lines.append(f"| {name} | {v['mAP50']:.4f} | {v['mAP50-95']:.4f} | {cost} |")
    lines += ["", f"| transfer to the 4-class set, {o['transfer_epochs']} epochs | items | best mAP50-95 |", "|---|---|---|"]
    for name in ("transfer --freeze 10", "transfer", "transfer scratch"):
        v = r[name]
        items = (v["transferred"] or "-").split(" from ")[0]
        lines.append(f"| {name} | {items} | {v['mAP50-95']:.4f} |")
    d = r["detect"]
    lines += ["", f"detect (fp32 .onnx, {d['images']} val images): {d['drawn']} drawn images, {d['label_files']} label files, {d['detections']} detections at conf 0.25, "
              f"{d['seconds']:.1f} s -> {d['dir']}"]
    return "\n".join(lines)


EXPORT = "Export parity: core.val mAP50-95 of best.pt / its .onnx / its fp16 .onnx ({imgsz} px)"
LATENCY = "CPU latency, PyTorch (fused) -> onnxruntime, batch 1, 1 thread"


def headline(r: dict) -> dict[str, str]:
    """The README's headline figures: the .pt and .onnx files' mAP50-95, and onnxruntime's latency gain
    (each only where its phase measured it)."""
    v, out = r["val pt vs onnx"], {}
    if "pt" in v and "onnx" in v:
        out[EXPORT.format(imgsz=r["meta"]["options"]["imgsz"])] = " / ".join(
            f"{v[k]['mAP50-95']:.4f}" for k in ("pt", "onnx", "onnx fp16") if k in v)
    lat = [f"{size} px: {ms['pytorch']:.1f} -> {ms['onnxruntime']:.1f} ms ({ms['pytorch'] / ms['onnxruntime']:.1f}x)"
           for size, ms in r["latency"].items() if "pytorch" in ms and "onnxruntime" in ms]
    if lat:
        out[LATENCY] = "; ".join(lat)
    return out


def parse_args(argv: Sequence[str] | None = None) -> UseBenchOptions:
    d = UseBenchOptions()
    p = argparse.ArgumentParser(prog="python -m bench.use", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=d.out)
    p.add_argument("--model", type=t.existing_file, default=d.model)
    p.add_argument("--epochs", type=t.positive_int, default=d.epochs)
    p.add_argument("--transfer-epochs", type=t.positive_int, default=d.transfer_epochs)
    p.add_argument("--imgsz", type=t.positive_int, default=d.imgsz)
    p.add_argument("--large-imgsz", type=t.positive_int, default=d.large_imgsz)
    p.add_argument("--export-imgsz", type=t.positive_int, default=d.export_imgsz)
    p.add_argument("--batch", type=t.positive_int, default=d.batch)
    p.add_argument("--workers", type=t.non_negative_int, default=d.workers)
    p.add_argument("--check-images", type=t.positive_int, default=d.check_images)
    p.add_argument("--time-images", type=t.positive_int, default=d.time_images)
    p.add_argument("--latency-runs", type=t.positive_int, default=d.latency_runs)
    p.add_argument("--fresh", action="store_true", help="delete OUT (stored results, trainings, exports) and start over")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-record", action="store_true", help="do not append the tables to bench/results/use.md")
    a = p.parse_args(argv)
    return UseBenchOptions(out=a.out, model=a.model, epochs=a.epochs, transfer_epochs=a.transfer_epochs, imgsz=a.imgsz,
                           large_imgsz=a.large_imgsz, export_imgsz=a.export_imgsz, batch=a.batch, workers=a.workers,
                           check_images=a.check_images, time_images=a.time_images, latency_runs=a.latency_runs,
                           fresh=a.fresh, progress=not a.no_progress, record=not a.no_record)


@main_guard("bench.use")
def main(argv: Sequence[str] | None = None) -> int:
    o = parse_args(argv)
    t0 = time.perf_counter()
    result = run(o)
    text = report(result)
    atomic_write(o.out / "use.md", text + "\n")
    print(text)
    if o.record:
        record("use", text, result["meta"], command_line("bench.use", argv), headline=headline(result))
    print(f"\n{time.perf_counter() - t0:.0f} s; results: {o.out / 'use.json'}, tables: {o.out / 'use.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
