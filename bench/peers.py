"""Peer benchmark: ours against Ultralytics on the held-out suite (`make bench-peer`). A benchmark, not a test.

For each held-out set (bench/heldout.py) and each trainer, back to back on this machine:
1. a quick run (--quick-epochs, default 3): wall time of the whole command (start-up, data checks,
   validation every epoch and the trainer's own end-of-run work included), training images/s
   (epochs after the first, training part only: ours from results.csv `train_seconds`, Ultralytics'
   from on_train_epoch_start/end callbacks, bench/peer_ultralytics.py), effective training GFLOP/s
   (images/s x forward GFLOPs at imgsz x 3) against this machine's conv peak (bench.engine.conv_throughput)
   and against our model's forward+backward on a fixed batch (bench.engine.training_ceiling: what training
   could reach if data, loss and optimizer cost nothing), and peak memory of the process tree (main +
   loader workers), sampled from /proc every 0.2 s: the sum of RSS (counts pages shared by forked
   workers once per process) and the sum of PSS (shares them);
2. a full run (--epochs, default 30; 0 skips it): mAP50-95 of the last epoch and the best epoch, read
   from each trainer's results.csv (ours `mAP50-95`, Ultralytics `metrics/mAP50-95(B)`).

Trainers (every one with its engine's defaults otherwise; equal imgsz, batch, workers and epochs):
- ours:  `python -m core.train --model studies/models/yolov5n.yaml` (our YOLOv5n, anchor-based head);
- yolov5n: `yolo train model=yolov5n.yaml pretrained=False` (Ultralytics' YOLOv5n: v5 backbone, its
  anchor-free v8 head; the closest architecture it has);
- yolov8n: `yolo train model=yolov8n.yaml pretrained=False`;
- yolov5-v7: YOLOv5 v7.0 itself (pip `yolov5` 7.0.14, `make .venv-peer/.yolov5`), `train.py --cfg yolov5n.yaml
  --weights '' --noplots` through bench/peer_yolov5.py (its shims; per-epoch timings from its callbacks). Its mAP is
  YOLOv5's own count (multi-label NMS, interpolated AP), which scores one checkpoint 1.3-1.7x higher than ours
  (docs/recipe-vs-yolov5.md, Validation): compare it with ours through bench.fidelity_train.
Ultralytics runs with YOLO_OFFLINE=1 (no downloads, no font fetch), YOLO_AUTOINSTALL=False,
plots=False, device=cpu, its settings under the run folder. Note: on CPU Ultralytics sets
workers=0 whatever is asked (its trainer: "time dominated by inference"), so its RSS has no workers.

Results: one row per (set, trainer, run) in <out>/peer.csv and peer.json; the printed tables are a
pure function of that file (`--report-only <out>` prints them again) and are appended to
bench/results/peers.md (`--no-record`: not), the speed and mAP ratios to the README's headline (`headline`).
Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.engine import conv_throughput, training_ceiling
from bench.heldout import SETS, generate_heldout
from bench.record import command_line, machine, markdown_table, record
from core.data.config import load_data_config
from core.model.info import model_info
from core.model.yolo import Model

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ("ours", "yolov5n", "yolov8n", "yolov5-v7")
YOLOV5_V7 = "yolov5-v7"  # YOLOv5 v7.0 itself
# the mAP50-95 column of each engine's results.csv (Ultralytics for the rest)
MAP_COLUMN = {"ours": "mAP50-95", YOLOV5_V7: "metrics/mAP_0.5:0.95"}
OUR_MODEL = "studies/models/yolov5n.yaml"


# --- memory of a process tree ----------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree_memory(pid: int) -> tuple[float, float, int]:
    """(sum of RSS MB, sum of PSS MB, processes) over pid and all its descendants, from /proc."""
    kids, todo, pids = _children_map(), [pid], []
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(kids.get(p, []))
    rss = pss = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) / 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) / 1024
        except OSError:  # gone, or no smaps_rollup: fall back to statm's resident pages
            try:
                with open(f"/proc/{p}/statm") as f:
                    pages = int(f.read().split()[1])
                rss += pages * os.sysconf("SC_PAGE_SIZE") / 2**20
            except OSError:
                pass
    return rss, pss, len(pids)


class PeakMemory(threading.Thread):
    """Samples tree_memory(pid) every `interval` s until stop(); keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.rss = self.pss = 0.0
        self.procs = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss, pss, n = tree_memory(self.pid)
            self.rss, self.pss, self.procs = max(self.rss, rss), max(self.pss, pss), max(self.procs, n)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# --- one run -----------------------------------------------------------------------------------------

@dataclass
class RunSpec:
    set: str
    trainer: str
    epochs: int
    data: Path
    imgsz: int
    batch: int
    workers: int
    out: Path  # run folder
    ours_args: tuple[str, ...] = ()  # extra flags of our command (e.g. --bf16 on)
    peer_args: tuple[str, ...] = ()  # extra flags of a peer's command (YOLOv5 v7.0: e.g. --hyp H --optimizer AdamW)
    model: str = ""  # model yaml: ours a path (default OUR_MODEL), the peers a name (default <trainer>.yaml,
    # YOLOv5 v7.0: yolov5n.yaml)
    seed: int | None = None  # None: each engine's default seed


def command(spec: RunSpec, peer_python: str) -> tuple[list[str], dict]:
    """argv and extra environment of one run."""
    if spec.trainer == "ours":
        seed = () if spec.seed is None else ("--seed", str(spec.seed))
        return [sys.executable, "-m", "core.train", "--data", str(spec.data), "--model", spec.model or OUR_MODEL,
                "--epochs", str(spec.epochs), "--imgsz", str(spec.imgsz), "--batch-size", str(spec.batch),
                "--workers", str(spec.workers), "--project", str(spec.out.parent), "--name", spec.out.name,
                "--exist-ok", "--no-progress", *seed, *spec.ours_args], {}
    if spec.trainer == YOLOV5_V7:
        return [peer_python, str(REPO / "bench" / "peer_yolov5.py"), "train", "--timing", str(spec.out / "timing.json"),
                "--data", str(spec.data), "--cfg", spec.model or "yolov5n.yaml", "--weights", "",
                "--epochs", str(spec.epochs), "--img", str(spec.imgsz), "--batch-size", str(spec.batch),
                "--workers", str(spec.workers), "--device", "cpu", "--project", str(spec.out.parent),
                "--name", spec.out.name, "--exist-ok", "--noplots",
                *(() if spec.seed is None else ("--seed", str(spec.seed))), *spec.peer_args], {}
    env = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "YOLO_CONFIG_DIR": str(spec.out.parent / "ultralytics-config")}
    return [peer_python, str(REPO / "bench" / "peer_ultralytics.py"), "--timing", str(spec.out / "timing.json"),
            "train", f"model={spec.model or spec.trainer + '.yaml'}", f"data={spec.data}", f"epochs={spec.epochs}",
            f"imgsz={spec.imgsz}", f"batch={spec.batch}", f"workers={spec.workers}", "device=cpu",
            "pretrained=False", "plots=False", f"project={spec.out.parent}", f"name={spec.out.name}",
            "exist_ok=True", *(() if spec.seed is None else (f"seed={spec.seed}",)), *spec.peer_args], env


def _our_gflops(data: Path, imgsz: int, model: str = OUR_MODEL) -> float:
    return float(model_info(Model(str(REPO / model), nc=load_data_config(data)["nc"]), imgsz)["gflops"])


def _read_csv(path: Path) -> list[dict]:
    df = pd.read_csv(path)
    df.columns = [c.strip() for c in df.columns]
    return df.to_dict("records")


def measure(spec: RunSpec, peer_python: str) -> dict:
    """Run one training command; return its row (wall s, memory peaks, images/s, GFLOPs, mAP50-95)."""
    argv, extra_env = command(spec, peer_python)
    spec.out.mkdir(parents=True, exist_ok=True)
    log = spec.out.parent / f"{spec.out.name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **extra_env}, stdout=f, stderr=subprocess.STDOUT)
        mem = PeakMemory(proc.pid)
        mem.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        mem.stop()
    row = {"set": spec.set, "trainer": spec.trainer, "epochs": spec.epochs, "rc": rc, "wall_s": wall,
           "peak_rss_mb": mem.rss, "peak_pss_mb": mem.pss, "processes": mem.procs, "log": str(log),
           "command": " ".join(argv)}
    if rc != 0:
        print(f"  {spec.trainer} {spec.set}: exit {rc}, see {log}", flush=True)
        return row
    if spec.trainer == "ours":
        hist = _read_csv(spec.out / "results.csv")
        n_images = len(list((spec.data.parent / "images" / "train").glob("*.jpg")))
        timed = [(n_images, h["train_seconds"]) for h in hist]
        maps = [h["mAP50-95"] for h in hist]
        gflops = _our_gflops(spec.data, spec.imgsz, spec.model or OUR_MODEL)
    else:
        hist = _read_csv(spec.out / "results.csv")
        timing = json.loads((spec.out / "timing.json").read_text())
        timed = [(e["images"], e["train_seconds"]) for e in timing["epochs"]]
        maps = [h[MAP_COLUMN.get(spec.trainer, "metrics/mAP50-95(B)")] for h in hist]
        gflops = timing.get("gflops", float("nan"))
    steady = timed[1:] or timed  # the first epoch starts workers and warms up
    ips = sum(n for n, _ in steady) / max(sum(s for _, s in steady), 1e-9)
    row.update({"train_images_per_s": ips, "model_gflops": gflops, "train_gflop_per_s": ips * gflops * 3,
                "mAP50-95_last": maps[-1] if maps else float("nan"), "mAP50-95_best": max(maps) if maps else float("nan"),
                "epochs_done": len(maps)})
    return row


def warm_up(trainers: list[str], peer_python: str) -> None:
    """Import each stack once untimed, so the first timed run does not pay for a cold file cache."""
    if "ours" in trainers:
        subprocess.run([sys.executable, "-c", "import torch, cv2, core.train"], cwd=REPO, check=False)
    if any(t not in ("ours", YOLOV5_V7) for t in trainers):
        subprocess.run([peer_python, "-c", "import torch, torchvision, ultralytics.models"], cwd=REPO, check=False,
                       env={**os.environ, "YOLO_OFFLINE": "1"})
    if YOLOV5_V7 in trainers:
        subprocess.run([peer_python, "-c", "import sys; sys.path.insert(0, 'bench'); import peer_yolov5; "
                        "peer_yolov5.install_shims(); import yolov5.train"], cwd=REPO, check=False)


# --- machine, suite, report ---------------------------------------------------------------------------

def _fmt(v, spec: str) -> str:
    """format(v, spec), or '-' for a missing value."""
    if v is None or v != v:
        return "-"
    return format(v, spec)


def report(rows: list[dict], meta: dict) -> str:
    """The markdown tables: per set, one row per trainer for the quick and the full run, then ours / each peer;
    last, mAP50-95 of every set and trainer side by side."""
    lines = [f"peer benchmark {meta.get('date', '')} on {meta.get('cpu', '?')} ({meta.get('simd', '')}), "
             f"{meta.get('cpus')} CPUs, OMP_NUM_THREADS={meta.get('OMP_NUM_THREADS') or 'unset'}; "
             f"conv peak {meta.get('conv_gflop_per_s', float('nan')):.1f} GFLOP/s (our model's forward+backward "
             f"alone, no data, loss or optimizer: {meta.get('ceiling_gflop_per_s', float('nan')):.1f}, "
             f"{meta.get('ceiling_gflop_per_s', float('nan')) / (meta.get('conv_gflop_per_s') or float('nan')):.2f}"
             f" of peak); imgsz {meta.get('imgsz')}, "
             f"batch {meta.get('batch')}, workers {meta.get('workers')}; ours bf16 autocast by default "
             f"{meta.get('ours_bf16', 'off')}; ours extra flags: {meta.get('ours_args') or 'none'}"]
    peak = meta.get("conv_gflop_per_s") or float("nan")
    for s in dict.fromkeys(r["set"] for r in rows):
        quick = {r["trainer"]: r for r in rows if r["set"] == s and r.get("run") == "quick"}
        full = {r["trainer"]: r for r in rows if r["set"] == s and r.get("run") == "full"}
        table = []
        for t in dict.fromkeys([*quick, *full]):
            q, f = quick.get(t, {}), full.get(t, {})
            table.append((t, _fmt(q.get("wall_s"), ".1f"), _fmt(q.get("train_images_per_s"), ".1f"),
                          _fmt(q.get("train_gflop_per_s"), ".2f"),
                          _fmt(q.get("train_gflop_per_s", float("nan")) / peak, ".2f"),
                          _fmt(q.get("peak_rss_mb"), ".0f"), _fmt(q.get("peak_pss_mb"), ".0f"),
                          _fmt(q.get("processes"), "d"), _fmt(q.get("mAP50-95_last"), ".4f"),
                          _fmt(f.get("mAP50-95_last"), ".4f"), _fmt(f.get("mAP50-95_best"), ".4f"),
                          _fmt(f.get("wall_s"), ".0f")))
        lines += ["", f"**{s}**", "", markdown_table(
            ["trainer", "quick: wall s", "img/s", "GFLOP/s", "of peak", "RSS MB", "PSS MB", "procs", "mAP",
             "full: mAP last", "mAP best", "wall s"], table)]
        if "ours" in quick or "ours" in full:
            lines.append("")
            for t in [t for t in dict.fromkeys([*quick, *full]) if t != "ours"]:
                def ratio(run, key):
                    a, b = run.get("ours", {}).get(key), run.get(t, {}).get(key)
                    return "-" if a is None or b is None or a != a or b != b or b == 0 else f"{a / b:.2f}"
                lines.append(f"- ours/{t}: wall {ratio(quick, 'wall_s')} (target <= 0.67), img/s "
                             f"{ratio(quick, 'train_images_per_s')} (>= 1.5), RSS {ratio(quick, 'peak_rss_mb')} "
                             f"PSS {ratio(quick, 'peak_pss_mb')} (<= 1), mAP50-95 last {ratio(full, 'mAP50-95_last')} "
                             f"best {ratio(full, 'mAP50-95_best')} (>= 1)")
    full = [r for r in rows if r.get("run") == "full" and r.get("rc") == 0]
    if full:
        trainers = list(dict.fromkeys(r["trainer"] for r in full))
        peers = [t for t in trainers if t != "ours"]
        table = []
        for s in dict.fromkeys(r["set"] for r in full):
            v = {r["trainer"]: r["mAP50-95_last"] for r in full if r["set"] == s}
            table.append((s, *(_fmt(v.get(t), ".4f") for t in trainers),
                          *(_fmt(v["ours"] / v[t], ".2f") if "ours" in v and v.get(t) else "-" for t in peers)))
        lines += ["", f"mAP50-95 (last epoch) after {full[0]['epochs']} epochs", "",
                  markdown_table(["set", *trainers, *(f"ours/{t}" for t in peers)], table)]
    return "\n".join(lines)


SPEED = "Training images/s, ours / Ultralytics yolov5n ({set}, {epochs} epochs)"
ACCURACY = "mAP50-95 after {epochs} epochs, ours / Ultralytics {peer} (held-out suite)"


def headline(rows: list[dict]) -> dict[str, str]:
    """The README's headline figures of a run: the images/s ratio per set timed against yolov5n, and the
    mAP50-95 ratios against each peer when the run trained every set of the suite."""
    ok = [r for r in rows if r.get("rc") == 0]
    out = {}
    for s in dict.fromkeys(r["set"] for r in ok):
        quick = {r["trainer"]: r for r in ok if r["set"] == s and r.get("run") == "quick"}
        if "ours" in quick and "yolov5n" in quick:
            o, y = quick["ours"], quick["yolov5n"]
            out[SPEED.format(set=s, epochs=o["epochs"])] = (
                f"{o['train_images_per_s'] / y['train_images_per_s']:.2f}x (wall {o['wall_s'] / y['wall_s']:.2f})")
    full = [r for r in ok if r.get("run") == "full"]
    maps = {(r["set"], r["trainer"]): r["mAP50-95_last"] for r in full}
    for peer in (t for t in TRAINERS if t not in ("ours", YOLOV5_V7)):  # YOLOv5 counts its mAP its own way
        if all((s, t) in maps for s in SETS for t in ("ours", peer)):
            out[ACCURACY.format(epochs=full[0]["epochs"], peer=peer)] = ", ".join(
                f"{s} {maps[s, 'ours'] / maps[s, peer]:.2f}" for s in SETS) + " (one seed each)"
    return out


def _write(out: Path, rows: list[dict], meta: dict) -> None:
    pd.DataFrame(rows).to_csv(out / "peer.csv", index=False)
    (out / "peer.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sets", default=",".join(SETS), help=f"held-out sets, of: {', '.join(SETS)}")
    p.add_argument("--trainers", default=",".join(TRAINERS), help=f"of: {', '.join(TRAINERS)}")
    p.add_argument("--epochs", type=int, default=30, help="full run for mAP50-95 (0: skip)")
    p.add_argument("--quick-epochs", type=int, default=3, help="timed run (0: skip)")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n-train", type=int, default=800, help="images per set (train)")
    p.add_argument("--n-val", type=int, default=200, help="images per set (val)")
    p.add_argument("--data-root", default=None, help="held-out suite folder (default datasets/heldout-v1, "
                   "or datasets/heldout-v1-<n-train>-<n-val> for other sizes)")
    p.add_argument("--peer-python", default=str(REPO / ".venv-peer" / "bin" / "python"),
                   help="python of the venv with Ultralytics (make bench-peer builds .venv-peer)")
    p.add_argument("--ours-args", default="", help="extra flags of our trainer's command, e.g. '--bf16 on'")
    p.add_argument("--out", default=None, help="default runs/peer/<date-time>")
    p.add_argument("--report-only", default=None, help="print the tables of an earlier run folder and exit")
    p.add_argument("--no-record", action="store_true", help="do not append the tables to bench/results/peers.md")
    args = p.parse_args(argv)
    if args.report_only:
        saved = json.loads((Path(args.report_only) / "peer.json").read_text())
        print(report(saved["rows"], saved["meta"]))
        return 0
    sets, trainers = args.sets.split(","), args.trainers.split(",")
    for t in trainers:
        if t not in TRAINERS:
            p.error(f"--trainers: unknown trainer {t!r}; known: {', '.join(TRAINERS)}")
    if any(t != "ours" for t in trainers) and not Path(args.peer_python).exists():
        p.error(f"--peer-python {args.peer_python} does not exist: `make bench-peer` installs .venv-peer")
    root = Path(args.data_root or ("datasets/heldout-v1" if (args.n_train, args.n_val) == (800, 200)
                                   else f"datasets/heldout-v1-{args.n_train}-{args.n_val}"))
    yamls = generate_heldout(REPO / root, sets, n_train=args.n_train, n_val=args.n_val)
    out = Path(args.out or f"runs/peer/{datetime.datetime.now():%Y%m%d-%H%M%S}").resolve()
    out.mkdir(parents=True, exist_ok=True)

    ceiling = training_ceiling(str(REPO / OUR_MODEL), args.imgsz, args.batch)["ceiling_eager_gflop_per_s"]
    meta = {**machine(), "conv_gflop_per_s": conv_throughput(), "ceiling_gflop_per_s": ceiling,
            "imgsz": args.imgsz, "batch": args.batch,
            "workers": args.workers, "n_train": args.n_train, "n_val": args.n_val, "python": sys.executable,
            "peer_python": args.peer_python, "ours_args": args.ours_args}
    print(report([], meta), flush=True)
    warm_up(trainers, args.peer_python)
    rows: list[dict] = []
    runs = [("quick", args.quick_epochs), ("full", args.epochs)]
    for s in sets:
        for run, epochs in runs:
            if epochs <= 0:
                continue
            for t in trainers:
                spec = RunSpec(s, t, epochs, yamls[s].resolve(), args.imgsz, args.batch, args.workers,
                               out / s / f"{t}-{run}-e{epochs}", tuple(args.ours_args.split()))
                print(f"{s} {t} {run} ({epochs} epochs) ...", flush=True)
                row = {"run": run, **measure(spec, args.peer_python)}
                rows.append(row)
                _write(out, rows, meta)
                print(f"  {row['wall_s']:.1f} s, {row.get('train_images_per_s', float('nan')):.1f} img/s, "
                      f"RSS {row['peak_rss_mb']:.0f} MB, mAP50-95 {row.get('mAP50-95_last', float('nan')):.4f}", flush=True)
    print()
    text = report(rows, meta)
    print(text)
    print(f"\nwritten to {out}/peer.csv and peer.json")
    if not args.no_record:
        record("peers", text, meta, command_line("bench.peers", argv), headline=headline(rows))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
