"""Detections of the study's best (retrained) and pruned models on a few val images, for the report.

`draw_detections(run_dir)` runs `core.detect.detect` with both checkpoints on the first `n` images of
the study's val set (sorted by name) and writes runs/study/NAME/detect/{best,pruned}/<image>.jpg and
detect/detect.json (which weights, images, sizes, thresholds and per-image detection counts), which
`evolve.html_report` shows side by side. The best model is the retrain run the prune phase started
from (retrain/choice.json); the pruned one is the last stage of prune/prune_results.csv.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from core.atomic import atomic_write
from core.data.config import load_data_config
from core.data.files import list_image_files
from core.detect import detect
from core.ensemble import input_size, load_for_inference

DETECT_JSON = "detect.json"
BUILTIN = " (built-in synthetic)"  # how study.json marks the built-in dataset after its yaml path


def study_models(run_dir: Path) -> dict[str, Path]:
    """{'best': retrain/<chosen run>/best.pt, 'pruned': prune/<last stage>.pt}, those that exist."""
    out = {}
    choice = run_dir / "retrain" / "choice.json"
    run = json.loads(choice.read_text()).get("chosen_run") if choice.is_file() else None
    if run is None and (run_dir / "retrain" / "retrain.csv").is_file():  # no choice yet: the best retrain run
        df = pd.read_csv(run_dir / "retrain" / "retrain.csv")
        run = str(df.sort_values(["fitness", "seed"], ascending=[False, True]).run.iloc[0]) if len(df) else None
    if run and (run_dir / "retrain" / run / "best.pt").is_file():
        out["best"] = run_dir / "retrain" / run / "best.pt"
    results = run_dir / "prune" / "prune_results.csv"
    if results.is_file():
        stages = pd.read_csv(results).stage
        if len(stages) and (run_dir / "prune" / f"{stages.iloc[-1]}.pt").is_file():
            out["pruned"] = run_dir / "prune" / f"{stages.iloc[-1]}.pt"
    return out


def study_val_images(run_dir: Path, n: int) -> list[str]:
    """The first n val images (sorted) of the study's data (study.json), or of the built-in dataset."""
    rec = json.loads((run_dir / "study.json").read_text()) if (run_dir / "study.json").is_file() else {}
    data = rec.get("data")
    data = None if not data or data.endswith(BUILTIN) else data
    return sorted(list_image_files(load_data_config(data)["val"]))[:n]


def study_imgsz(run_dir: Path) -> int:
    """The size the models were trained and pruned at: the prune table's imgsz, else the study's."""
    results = run_dir / "prune" / "prune_results.csv"
    if results.is_file():
        df = pd.read_csv(results)
        if "imgsz" in df and len(df):
            return int(df.imgsz.iloc[0])
    rec = json.loads((run_dir / "study.json").read_text()) if (run_dir / "study.json").is_file() else {}
    return int((rec.get("config") or {}).get("imgsz") or 640)


def draw_detections(run_dir: Path | str, n: int = 4, conf: float = 0.25, iou: float = 0.45) -> dict[str, Any] | None:
    """Write detect/<model>/<image> for the best and pruned models and detect/detect.json; returns its
    record, or None when neither checkpoint exists yet."""
    run_dir = Path(run_dir)
    models = study_models(run_dir)
    if not models:
        return None
    files = study_val_images(run_dir, n)
    imgsz = study_imgsz(run_dir)
    rec: dict[str, Any] = {"images": [Path(f).name for f in files], "sources": files, "imgsz": imgsz, "conf": conf,
                           "iou": iou, "models": {}}
    for role, weights in models.items():
        model = load_for_inference(weights)
        results = detect(model, files, input_size(model, imgsz), run_dir / "detect" / role, conf, iou)
        rec["models"][role] = {"weights": str(weights.relative_to(run_dir)),
                               "detections": [len(r["detections"]) for r in results]}
    atomic_write(run_dir / "detect" / DETECT_JSON, json.dumps(rec, indent=1))
    return rec
