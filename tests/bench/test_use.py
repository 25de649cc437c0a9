"""bench/use.py's own logic (the benchmark itself trains for minutes: `make bench-use`): phases stored
and skipped on a rerun, the data yamls it writes, and its tables."""
from __future__ import annotations

import yaml

from bench.use import HELDOUT, HELDOUT_NAMES, Phases, data_yaml, report


def test_phases_are_stored_as_they_finish_and_skipped_on_a_rerun(tmp_path):
    calls = []
    first = Phases(tmp_path / "use.json")
    assert first("a", lambda: calls.append("a") or {"x": 1}) == {"x": 1}
    try:
        first("b", lambda: 1 / 0)  # an interrupted phase stores nothing ...
    except ZeroDivisionError:
        pass
    again = Phases(tmp_path / "use.json")  # ... and a rerun skips only what was stored
    assert again("a", lambda: calls.append("a again") or {"x": 2}) == {"x": 1}
    assert again("b", lambda: calls.append("b") or 3) == 3
    assert calls == ["a", "b"] and set(again.data) == {"a", "b"} and again.data["a"]["seconds"] >= 0


def test_data_yaml_names_the_generated_set(tmp_path):
    raw = yaml.safe_load(data_yaml(tmp_path, "heldout", HELDOUT_NAMES, HELDOUT).read_text())
    assert raw["names"] == dict(enumerate(HELDOUT_NAMES)) and raw["synthetic"] == HELDOUT
    assert raw["path"].endswith(f"datasets/use-heldout-{HELDOUT['seed']}") and raw["val"] == "images/val"


def _metrics(m: float) -> dict:
    return {"P": 0.5, "R": 0.25, "mAP50": 2 * m, "mAP50-95": m}


def test_report_shows_every_phase_and_ratios_to_the_single_model():
    r = {"meta": {"date": "2026-11-23T10:00:00", "cpu": "Test CPU", "simd": "avx2", "cpus": 2, "torch": "2.13.0",
                  "options": {"model": "m.yaml", "epochs": 20, "imgsz": 160, "transfer_epochs": 10}},
         "train seed 0": {"epochs": 20, "mAP50": 0.2, "mAP50-95": 0.1},
         "train seed 1": {"epochs": 20, "mAP50": 0.22, "mAP50-95": 0.11},
         "export": {"best-160.onnx": {"MB": 1.85, "passed": True, "scores": 1e-6, "boxes": 5e-7, "boxes_px": 9e-5,
                                      "floor_boxes_px": 8e-5},
                    "best-640.onnx": {"MB": 1.85, "passed": False, "error": "differs"}},
         "val pt vs onnx": {"pt": _metrics(0.1), "onnx": _metrics(0.1)},
         "latency": {"160": {"pytorch": 6.0, "onnxruntime": 2.0}, "640": {"pytorch": 40.0, "onnxruntime": 20.0}},
         "tta and ensembles": {"seed 0": _metrics(0.1), "seed 0 --augment": _metrics(0.12),
                               "seed 0 @224": _metrics(0.11)},
         "time per image": {"seed 0": 8.0, "seed 0 --augment": 28.0},
         "transfer --freeze 10": {"transferred": "Transferred 343/349 items from w.pt", "mAP50-95": 0.07},
         "transfer": {"transferred": "Transferred 343/349 items from w.pt", "mAP50-95": 0.06},
         "transfer scratch": {"transferred": None, "mAP50-95": 0.001},
         "detect": {"images": 150, "drawn": 150, "label_files": 150, "detections": 118, "seconds": 3.0, "dir": "d"}}
    text = report(r)
    assert "Test CPU (avx2; AVX-512: no)" in text
    assert "| best-640.onnx | 1.85 | NO |" in text  # a failed check is shown, not dropped
    assert "| 160 px | 6.0 (1.00x) | 2.0 (3.00x) |" in text and "| 640 px | 40.0 (1.00x) | 20.0 (2.00x) |" in text
    assert "| seed 0 --augment | 0.2400 | 0.1200 | 3.50x |" in text and "| seed 0 | 0.2000 | 0.1000 | 1.00x (8.0 ms) |" in text
    assert "| transfer --freeze 10 | Transferred 343/349 items | 0.0700 |" in text and "| transfer scratch | - | 0.0010 |" in text
    assert "150 drawn images, 150 label files, 118 detections" in text
