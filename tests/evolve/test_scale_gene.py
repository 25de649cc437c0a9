"""Width and depth multiples as genes (evolve/scale_gene.py): a two-objective study from scratch where each
trial builds the model yaml at its own multiples, its GFLOPs are that model's, the retrain trains the chosen
trial's architecture, and the report and recorded table name the multiples; the refusals name the field."""
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

import evolve.study as st
from core.model.info import model_gflops
from core.model.yolo import Model, load_arch
from evolve.launcher import prepare_study
from evolve.scale_gene import STEPS, model_multiples, scaled_model, suggest_on_grid
from evolve.study_config import REPO, StudyError
from evolve.worker import run_worker
from tests.evolve.test_study_report import write_prune
from tests.helpers import fake_fit

MODEL = REPO / "studies" / "models" / "yolov5-cpu.yaml"  # the quick study's: width 0.125, depth 0.33
BUDGET = 0.1  # GFLOPs at 160 px: the yaml's own 0.084, width 0.1875 0.17-0.22, width 0.25 0.28-0.35
NO_LABELS = {"optimizer": "AdamW", "nbs": 16, "workers": 0, "automosaic": False}  # the test data has no images


def on_grid(value: float, step: float) -> bool:
    return abs(value / step - round(value / step)) < 1e-4


def test_scaled_model_is_the_yaml_at_the_multiples_and_builds_them(tmp_path):
    path = scaled_model(MODEL, {"width_multiple": 0.25, "depth_multiple": 2 / 3}, tmp_path)
    expected = {**load_arch(MODEL), "width_multiple": 0.25, "depth_multiple": 2 / 3}
    assert load_arch(path) == expected  # nothing else of the architecture changes
    model = Model(path)
    assert model.model[0].conv.out_channels == 16  # 64 x 0.25, where the yaml's 0.125 builds 8
    assert len(model.model[4].m) == 4  # the 6-block C3 at depth 2/3
    stamp = Path(path).stat().st_mtime_ns
    assert scaled_model(MODEL, {"width_multiple": 0.25, "depth_multiple": 2 / 3}, tmp_path) == path
    assert Path(path).stat().st_mtime_ns == stamp  # written once per pair
    assert scaled_model(MODEL, model_multiples(MODEL), tmp_path) == str(MODEL)  # its own multiples: the yaml itself


def test_suggest_on_grid_snaps_the_range_inward():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [suggest_on_grid(study.ask(), "width_multiple", [0.07, 0.3], 1 / 32) for _ in range(60)]
    assert min(values) >= 3 / 32 and max(values) <= 9 / 32 and all(on_grid(v, 1 / 32) for v in values)
    assert len(set(values)) == 7  # 3/32 .. 9/32, every grid point inside the range


def sized_fit(seen):
    """The fake fit, its fitness rising with the width of the model it was given (as a detector's does), so the
    best trial overall is a wide, costly one and the budget changes which trial is chosen; records each run's
    model file by run name."""
    def fit(data, model, hyp, opts, callbacks=None):
        seen[opts.name] = str(model)
        result = fake_fit(data, model, hyp, opts, callbacks)
        for m in [*result.history, result.best]:
            m["fitness"] *= model_multiples(model)["width_multiple"] / 0.25
        return result
    return fit


def test_a_study_searches_width_and_depth_from_scratch(cfg_for, tmp_path, monkeypatch):
    monkeypatch.setattr(st, "prune_hyp", lambda cfg, run, imgsz=None: (dict(run["hyp"]), "the trials' hyp"))
    seen: dict[str, str] = {}
    fit = sized_fit(seen)

    def launch(cfg, storage, run_dir, deadline=None):
        prepare_study(cfg, storage, run_dir)
        run_worker(cfg, run_dir, storage, fit=fit, log=lambda m: None)
        return 0
    cfg = cfg_for("scaled", trials=10, epochs=2, noise_seeds=2, sampler="tpe", objectives=["fitness", "gflops"],
                  width_range=[0.0625, 0.25], depth_range=[0.25, 0.5], budget={"gflops": BUDGET},
                  retrain={"epochs": 2, "top_k": 1, "seeds": 1, "base": True}, train=NO_LABELS)
    run_dir = tmp_path / "runs" / "study" / "scaled"
    code = st.run_study(cfg, run_dir, tmp_path / "runs" / "evolve" / "scaled", threads=1, launch_fn=launch, fit=fit,
                        prune_fn=lambda popts: write_prune(Path(popts.project) / popts.name))
    assert code == 0

    done = pd.read_csv(run_dir / "evolve" / "evolve.csv").query("state == 'COMPLETE'")
    assert len(done) == 10
    base, searched = done[done.base], done[~done.base]
    assert (base.width_multiple == 0.125).all() and (base.depth_multiple == 0.33).all()  # the yaml's own
    assert searched.width_multiple.between(0.0625, 0.25).all() and searched.depth_multiple.between(0.25, 0.5).all()
    assert all(on_grid(v, STEPS["width_multiple"]) for v in searched.width_multiple)
    assert searched.width_multiple.nunique() > 1
    for r in done.itertuples():  # each trial trained a model at its own multiples
        assert model_multiples(seen[str(r.number)]) == {"width_multiple": r.width_multiple,
                                                        "depth_multiple": r.depth_multiple}
    for r in done.itertuples():  # its GFLOPs are that model's
        assert r.gflops == pytest.approx(model_gflops(Model(seen[str(r.number)]), 160), rel=1e-6)

    summary = json.loads((run_dir / "summary.json").read_text())
    chosen = summary["pareto"]["chosen"]
    assert chosen["cost"] <= BUDGET and chosen["width_multiple"] is not None
    within = searched[searched.gflops <= BUDGET]
    assert chosen["trial"] == int(within.sort_values(["fitness", "gflops"], ascending=[False, True]).number.iloc[0])
    assert done.fitness.max() > chosen["fitness"]  # the budget mattered: a wider trial is better and over it
    retrain = pd.read_csv(run_dir / "retrain" / "retrain.csv")
    best = retrain[retrain.role == "best"].iloc[0]
    assert model_multiples(seen[best.run]) == {"width_multiple": chosen["width_multiple"],
                                               "depth_multiple": chosen["depth_multiple"]}
    assert seen[retrain[retrain.role == "base"].run.iloc[0]] == str(MODEL)  # the reference: the yaml itself

    from bench.study_table import rows
    front_row = dict(rows(summary))[f"Pareto front: fitness vs gflops, {len(summary['pareto']['front'])} of 10 trials"]
    assert "width " in front_row and "depth " in front_row
    doc = (run_dir / "report.html").read_text()
    assert "<th>width</th>" in doc and "width searched [0.0625, 0.25]" in doc


@pytest.mark.parametrize("fields, message", [
    ({"width_range": [0.0625, 0.25], "base": {"epochs": 2}}, "a warm start"),
    ({"depth_range": [0.25, 0.5], "weights": "w.pt"}, "a warm start"),
    ({"width_range": [0.0625, 0.25], "sampler": "ga", "objectives": ["fitness"]}, "the GA evolves the hyp space"),
    ({"width_range": [0.25, 0.125]}, r"0 < LOW < HIGH <= 2.0"),
    ({"depth_range": [0, 0.5]}, r"0 < LOW < HIGH <= 2.0"),
    ({"width_range": "wide"}, r"'width_range'='wide' must be \[LOW, HIGH\]"),
])
def test_scale_ranges_refused_with_the_field_named(cfg_for, fields, message):
    kw = {"sampler": "tpe", "objectives": ["fitness", "gflops"], **fields}
    with pytest.raises(StudyError, match=message):
        cfg_for("bad", **kw)
