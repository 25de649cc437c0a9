"""`python -m evolve.study --data D.yaml` (and `make study DATA=D.yaml`): the main job on the user's own data,
with the quick study's settings and no study file."""
from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from evolve import study as st
from evolve.launcher import launch
from evolve.study_config import load_study
from tests.helpers import FAKE_FIT, REPO, SHAPE_NAMES, fake_fit, synthetic_yaml


@pytest.mark.parametrize("path, name", [("sets/cars.yaml", "cars"), ("exports/My Set v2/data.yaml", "My_Set_v2"),
                                        ("data.yaml", "here")])
def test_the_study_is_named_after_the_data(tmp_path, monkeypatch, path, name):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here" if path == "data.yaml" else tmp_path)
    assert st.data_study_name(path) == name


def test_main_runs_the_quick_study_on_the_given_data_end_to_end(tmp_path, monkeypatch):
    """Through main() as the command line parses it, with the fake fit in the workers, base run and retrain:
    the quick study's settings on the given data, named after it, every phase's files written."""
    (tmp_path / "sets").mkdir()
    data = Path(synthetic_yaml(tmp_path / "sets", "cars", SHAPE_NAMES, "seed: 1, n_train: 8, n_val: 4, imgsz: 64"))
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_launch(cfg, storage, run_dir):
        calls.append(cfg)
        return launch(cfg, storage, run_dir, fit_spec=FAKE_FIT, poll=0.2)

    monkeypatch.setattr(st, "run_study", functools.partial(st.run_study, launch_fn=fake_launch, fit=fake_fit,
                                                           prune_fn=lambda popts: None))
    assert st.main(["--data", str(data.relative_to(tmp_path)), "--trials", "4", "--workers", "1"]) == 0
    cfg, quick = calls[0], load_study(REPO / "studies" / "quick.yaml")
    assert cfg.name == "cars" and cfg.data == str(data) and cfg.trials == 4
    for key in ("model", "hyp", "space", "imgsz", "epochs", "base", "noise_seeds", "sampler", "retrain", "objective"):
        assert getattr(cfg, key) == getattr(quick, key), key
    run_dir = tmp_path / "runs" / "study" / "cars"
    record = json.loads((run_dir / "study.json").read_text())
    assert record["data"] == str(data) and record["config"]["name"] == "cars"
    evolve_csv = pd.read_csv(run_dir / "evolve" / "evolve.csv")
    assert evolve_csv.state.eq("COMPLETE").sum() == 4 and evolve_csv.noise.sum() == 3
    assert pd.read_csv(run_dir / "retrain" / "retrain.csv").role.tolist().count("base") == 3
    assert (run_dir / "report.html").is_file() and (run_dir / "summary.json").is_file()
    assert (tmp_path / "runs" / "evolve" / "cars" / "base" / "run.json").is_file()  # its own base run


def test_make_study_passes_data():
    out = subprocess.run(["make", "-n", "-o", "install", "study", "DATA=sets/cars.yaml"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "-m evolve.study --study studies/quick.yaml --data sets/cars.yaml" in out
    plain = subprocess.run(["make", "-n", "-o", "install", "study"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout
    assert "--data" not in plain
