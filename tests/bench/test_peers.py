"""bench.peers with YOLOv5 v7.0 as a trainer (yolov5-v7): its command, and its run read back (results.csv columns,
timings) through a stand-in peer python; bench/peer_yolov5.py's epoch timer."""
import json
import stat
import sys
from pathlib import Path

import pytest

from bench.peers import YOLOV5_V7, RunSpec, command, headline, measure


def test_yolov5_v7_command():
    spec = RunSpec("glyphs", YOLOV5_V7, 30, Path("/d/data.yaml"), 160, 16, 2, Path("/o/run"), seed=2)
    argv, env = command(spec, "peer-python")
    assert argv[:4] == ["peer-python", str(Path(__file__).resolve().parents[2] / "bench" / "peer_yolov5.py"),
                        "train", "--timing"] and argv[4] == "/o/run/timing.json"
    flags = dict(zip(argv[5:-4:2], argv[6:-4:2]))
    assert flags == {"--data": "/d/data.yaml", "--cfg": "yolov5n.yaml", "--weights": "", "--epochs": "30",
                     "--img": "160", "--batch-size": "16", "--workers": "2", "--device": "cpu", "--project": "/o",
                     "--name": "run"}
    assert argv[-4:] == ["--exist-ok", "--noplots", "--seed", "2"] and env == {}  # plots: Pillow 10 broke them
    assert "--seed" not in command(RunSpec("glyphs", YOLOV5_V7, 3, Path("/d.yaml"), 160, 16, 2, Path("/o/r")), "p")[0]


# A stand-in for the peer venv's python: writes what YOLOv5 v7.0 writes (results.csv with its padded column
# names, mAP 0.01 x epoch) and what peer_yolov5.py's timer writes, into --project/--name.
FAKE_YOLOV5 = '''#!{python}
import json, sys
from pathlib import Path
a = sys.argv[1:]
flag = lambda k: a[a.index(k) + 1]
out = Path(flag("--project")) / flag("--name")
out.mkdir(parents=True, exist_ok=True)
n = int(flag("--epochs"))
rows = ["{{:>10}},{{:>20}},{{:>20}}".format("epoch", "train/cls_loss", "metrics/mAP_0.5:0.95")]
rows += ["{{:>10}},{{:>20}},{{:>20}}".format(e, 3.0 - e, 0.01 * (e + 1)) for e in range(n)]
(out / "results.csv").write_text("\\n".join(rows) + "\\n")
json.dump({{"epochs": [{{"epoch": e, "train_seconds": 2.0, "batches": 5, "images": 80}} for e in range(n)]}},
          open(flag("--timing"), "w"))
'''


def test_a_yolov5_v7_run_is_read_back(tmp_path):
    peer = tmp_path / "peer-python"
    peer.write_text(FAKE_YOLOV5.format(python=sys.executable))
    peer.chmod(peer.stat().st_mode | stat.S_IEXEC)
    spec = RunSpec("glyphs", YOLOV5_V7, 3, tmp_path / "data.yaml", 160, 16, 2, tmp_path / "runs" / "v7")
    row = measure(spec, str(peer))
    assert row["rc"] == 0, Path(row["log"]).read_text()
    assert row["mAP50-95_last"] == pytest.approx(0.03) and row["mAP50-95_best"] == pytest.approx(0.03)
    assert row["train_images_per_s"] == pytest.approx(40.0) and row["epochs_done"] == 3


def test_headline_leaves_yolov5_v7_out_of_the_accuracy_ratios():
    from bench.heldout import SETS
    rows = [{"rc": 0, "run": "full", "set": s, "trainer": t, "epochs": 30, "mAP50-95_last": 0.1}
            for s in SETS for t in ("ours", "yolov5n", YOLOV5_V7)]
    keys = list(headline(rows))
    assert any("Ultralytics yolov5n" in k for k in keys) and not any(YOLOV5_V7 in k for k in keys)


def test_peer_yolov5_epoch_timer_counts_images(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0")  # the module sets it by default at import
    from bench.peer_yolov5 import epoch_timer

    out = tmp_path / "timing.json"
    hooks = epoch_timer(str(out))
    for epoch, batches in ((0, (16, 16, 4)), (1, (16, 8))):
        hooks["on_train_epoch_start"]()
        for i, n in enumerate(batches):
            hooks["on_train_batch_end"](None, i, torch.zeros(n, 3, 8, 8), None, [], [0.0])
        hooks["on_train_epoch_end"](epoch=epoch)
    epochs = json.loads(out.read_text())["epochs"]
    assert [(e["epoch"], e["batches"], e["images"]) for e in epochs] == [(0, 3, 36), (1, 2, 24)]
    assert all(e["train_seconds"] >= 0 for e in epochs)
