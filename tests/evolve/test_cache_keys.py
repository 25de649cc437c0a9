"""The study's caches know what they were computed from: the base run and the retrain runs are redone when
the data (images, labels, generator settings), the objective or the code version change, and say why in one
line; with nothing changed they are reused (the control)."""
import json
import logging
import shutil
from pathlib import Path

import pytest

from core.data.config import load_data_config
from core.hyp import load_hyp
from evolve import study as st
from evolve.base_run import ensure_base_run
from evolve.launcher import check_shared_start, prepare_study
from evolve.study_config import StudyError, load_study
from tests.helpers import REPO, fake_fit, synthetic_yaml

QUICK = REPO / "studies" / "quick.yaml"
SETTINGS = "seed: 0, n_train: 4, n_val: 2, imgsz: 64"


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """(fit, calls): the fake fit, counting the runs it trains; the cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    calls = []

    def fit(data, model, hyp, opts, callbacks=None):
        calls.append(opts.name)
        return fake_fit(data, model, hyp, opts, callbacks)
    return fit, calls


def base_run(cfg, fit, log):
    return ensure_base_run(cfg, load_hyp(cfg.resolved("hyp")), Path("runs/evolve") / cfg.name, "cpu", fit=fit,
                           log=log.append)


def edit_label(yaml: str) -> None:
    label = Path(yaml).parent / "shapes" / "labels" / "train" / "000001.txt"
    label.write_text(label.read_text() + "0 0.5 0.5 0.25 0.25\n")  # a fixed box: one more row


def test_base_run_is_redone_when_the_built_in_set_is_regenerated_with_other_settings(tmp_path, counted, monkeypatch):
    fit, calls = counted
    builtin = Path(synthetic_yaml(tmp_path, "shapes", "[circle, square]", SETTINGS))
    load_data_config(builtin)  # generated (the fake fit reads no data)
    monkeypatch.setattr("core.data.config.DEFAULT_DATA", builtin)  # `data: null` is this set
    cfg = load_study(QUICK, {"name": "builtin", "base": {"epochs": 2}, "noise_seeds": 0})
    assert cfg.data is None
    log = []
    base_run(cfg, fit, log)
    base_run(cfg, fit, log)
    assert calls == ["base"] and "base run: reusing" in log[-1]  # control: unchanged inputs are reused
    shutil.rmtree(tmp_path / "shapes")  # delete and regenerate with other settings, as the yaml's comment says
    synthetic_yaml(tmp_path, "shapes", "[circle, square]", SETTINGS.replace("seed: 0", "seed: 1"))
    load_data_config(builtin)
    base_run(cfg, fit, log)
    assert calls == ["base", "base"]
    assert "base run: redoing, data changed (yaml, generator, images, labels)" in log


def test_base_run_is_redone_when_one_label_file_is_edited(tmp_path, counted):
    fit, calls = counted
    data = synthetic_yaml(tmp_path, "mine", "[circle, square]", SETTINGS)
    load_data_config(data)
    cfg = load_study(QUICK, {"name": "mine", "data": data, "base": {"epochs": 2}, "noise_seeds": 0})
    log = []
    base_run(cfg, fit, log)
    base_run(cfg, fit, log)
    assert calls == ["base"]  # control
    edit_label(data)
    base_run(cfg, fit, log)
    assert calls == ["base", "base"] and "base run: redoing, data changed (labels)" in log


def test_base_run_is_redone_by_other_code(tmp_path, counted, monkeypatch):
    fit, calls = counted
    cfg = load_study(QUICK, {"name": "code", "data": synthetic_yaml(tmp_path, "d", "[circle, square]", SETTINGS),
                             "base": {"epochs": 2}, "noise_seeds": 0})
    log = []
    base_run(cfg, fit, log)
    before = json.loads(Path("runs/evolve/code/base/run.json").read_text())["inputs"].get("code_version")
    monkeypatch.setattr("evolve.base_run.code_version", lambda: "0.1.0+g0123456789ab", raising=False)
    base_run(cfg, fit, log)
    assert calls == ["base", "base"]
    assert f"base run: redoing, code_version changed '{before}' -> '0.1.0+g0123456789ab'" in log


def retrain(cfg, fit, out):
    plan = [{"trial": 4, "role": "best", "seed": 1, "name": "trial4_seed1", "hyp": load_hyp(None), "trial_fitness": 0.1}]
    return st.run_retrain(cfg, plan, st.retrain_options(cfg), out, "cpu", force=False, fit=fit, parallel=False)


def test_retrain_run_is_redone_when_the_objective_changes(tmp_path, counted, caplog):
    caplog.set_level(logging.INFO, logger="evolve.study")
    fit, calls = counted
    data = synthetic_yaml(tmp_path, "d", "[circle, square]", SETTINGS)
    load_data_config(data)

    def study(objective):
        return load_study(QUICK, {"name": "obj", "data": data, "base": {}, "noise_seeds": 0, "objective": objective,
                                  "retrain": {"epochs": 3, "top_k": 1, "seeds": 1}})

    retrain(study("best"), fit, tmp_path / "retrain")
    retrain(study("best"), fit, tmp_path / "retrain")
    assert calls == ["trial4_seed1"] and "retrain trial4_seed1: reusing" in caplog.text  # control
    retrain(study("last"), fit, tmp_path / "retrain")
    assert calls == ["trial4_seed1"] * 2
    assert "retrain trial4_seed1: redoing, objective changed 'best' -> 'last'" in caplog.text
    edit_label(data)
    retrain(study("last"), fit, tmp_path / "retrain")
    assert calls == ["trial4_seed1"] * 3 and "retrain trial4_seed1: redoing, data_identity changed (labels)" in caplog.text


def test_study_phase_record_says_why_it_reruns(tmp_path):
    out = tmp_path / "retrain.csv"
    out.write_text("x")
    inputs = {"runs": [{"objective": "best", "seed": 1}, {"objective": "best", "seed": 2}]}
    assert st.phase_change(tmp_path, "retrain", inputs) == "no finished record"
    st.phase_done(tmp_path, "retrain", inputs, [out], 1.0)
    assert st.phase_change(tmp_path, "retrain", inputs) is None  # control
    other = {"runs": [{"objective": "last", "seed": 1}, {"objective": "last", "seed": 2}]}
    assert st.phase_change(tmp_path, "retrain", other) == "runs.objective changed 'best' -> 'last'"
    out.unlink()
    assert st.phase_change(tmp_path, "retrain", inputs) == f"{out} is missing"


def test_a_study_whose_base_run_inputs_changed_is_refused_with_the_reason(tmp_path, counted, monkeypatch):
    """Trials already finetuned the old base run: redoing it under the same study would mix two start points."""
    fit, calls = counted
    data = synthetic_yaml(tmp_path, "d", "[circle, square]", SETTINGS)
    load_data_config(data)
    cfg = load_study(QUICK, {"name": "joined", "data": data, "base": {"epochs": 2}, "noise_seeds": 0})
    hyp, run_dir = load_hyp(cfg.resolved("hyp")), Path("runs/evolve/joined")
    base_run(cfg, fit, [])
    prepare_study(cfg, None, run_dir)
    check_shared_start(cfg, hyp, None, run_dir)  # records the start weights' sha256 in the study
    check_shared_start(cfg, hyp, None, run_dir, before_base_run=True)  # control: the same inputs resume
    edit_label(data)
    with pytest.raises(StudyError, match=r"trained with other inputs \(data changed \(labels\)\).*--name"):
        check_shared_start(cfg, hyp, None, run_dir, before_base_run=True)
