"""A two-objective study end to end with the fake fit: trials record their image size and cost, summary.json
carries the front, the retrain and prune take the best trial within the budget at its image size; a
fitness-only study is unchanged."""
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

import evolve.study as st
from evolve.launcher import prepare_study
from evolve.objectives import COST_ATTRS
from evolve.pareto import Point, dominates
from evolve.storage import make_storage
from evolve.study_config import StudyError
from evolve.worker import run_worker
from tests.evolve.test_study_report import write_prune
from tests.helpers import fake_fit

BUDGET = 0.06  # GFLOPs of the quick study's model: 0.054 at 128 px, 0.084 at 160 px (the base hyp's size)
NO_LABELS = {"optimizer": "AdamW", "nbs": 16, "workers": 0, "automosaic": False}  # the test data has no images to read


def sized_fit(data, model, hyp, opts, callbacks=None):
    """The fake fit, its fitness rising with the image size (as a detector's does): the best trial overall is
    a large, costly one, so a budget changes which trial is chosen."""
    result = fake_fit(data, model, hyp, opts, callbacks)
    for m in [*result.history, result.best]:
        m["fitness"] *= opts.imgsz / 256
    return result


def in_process_launch(cfg, storage, run_dir, deadline=None):
    prepare_study(cfg, storage, run_dir)
    run_worker(cfg, run_dir, storage, fit=sized_fit, log=lambda m: None)
    return 0


def run_two_objective_study(cfg_for, tmp_path, monkeypatch, **kw):
    # prune.pipeline's AutoMosaic reads labels the test data lacks (evolve/prune_hyp.py is tested on its own)
    monkeypatch.setattr(st, "prune_hyp", lambda cfg, run, imgsz=None: (dict(run["hyp"]), "the trials' hyp"))
    cfg = cfg_for("front", trials=10, epochs=2, noise_seeds=2, sampler="nsga2", objectives=["fitness", "gflops"],
                  imgsz_range=[64, 256], budget={"gflops": BUDGET},
                  retrain={"epochs": 2, "top_k": 1, "seeds": 2, "base": True}, train=NO_LABELS, **kw)
    pruned = []

    def prune(popts):
        pruned.append(popts)
        write_prune(Path(popts.project) / popts.name)
    run_dir = tmp_path / "runs" / "study" / "front"
    code = st.run_study(cfg, run_dir, tmp_path / "runs" / "evolve" / "front", threads=1,
                        launch_fn=in_process_launch, fit=sized_fit, prune_fn=prune)
    return code, run_dir, pruned


def test_two_objective_study_front_budget_retrain_and_prune(cfg_for, tmp_path, monkeypatch):
    code, run_dir, pruned = run_two_objective_study(cfg_for, tmp_path, monkeypatch)
    assert code == 0
    df = pd.read_csv(run_dir / "evolve" / "evolve.csv")
    done = df[df.state == "COMPLETE"]
    assert len(done) == 10 and done.gflops.gt(0).all()
    assert set(done.imgsz) <= set(range(64, 257, 32)) and done.imgsz.nunique() > 1
    assert (done[done.base].imgsz == 160).all()  # the base hyp's trials keep the study's size
    # GFLOPs grow with the image size: the cost really is the trial's model at its own size
    by_size = done.groupby("imgsz").gflops.first()
    assert list(by_size) == sorted(by_size)

    summary = json.loads((run_dir / "summary.json").read_text())
    p = summary["pareto"]
    assert p["objectives"] == ["fitness", "gflops"] and p["budget"] == {"gflops": BUDGET}
    points = [Point(int(r.number), float(r.fitness), float(r.gflops)) for r in done.itertuples()]
    brute = {q.trial for q in points if not any(dominates(o, q) for o in points)}
    assert {q["trial"] for q in p["front"]} == brute
    within = done[done.gflops <= BUDGET]
    assert done.fitness.idxmax() not in within.index  # the budget matters: the best trial overall is over it
    best = within[~within.base].sort_values(["fitness", "gflops", "number"], ascending=[False, True, True]).iloc[0]
    assert p["chosen"]["trial"] == int(best.number) and p["chosen"]["cost"] <= BUDGET

    retrain = pd.read_csv(run_dir / "retrain" / "retrain.csv")
    candidates = retrain[retrain.role != "base"]
    searched_within = within[~within.base].sort_values(["fitness", "number"], ascending=[False, True])
    assert set(candidates.trial) == {int(searched_within.number.iloc[0])}
    assert (candidates.imgsz <= 128).all() and retrain[retrain.role == "base"].over_budget.all()
    choice = json.loads((run_dir / "retrain" / "choice.json").read_text())
    assert choice["chosen"] == int(searched_within.number.iloc[0])  # the base hyp is over the budget: never chosen
    chosen_size = int(done.set_index("number").loc[choice["chosen"], "imgsz"])
    assert len(pruned) == 1 and pruned[0].imgsz == chosen_size

    from bench.study_table import rows  # the recorded table carries the front and the choice too
    table = dict(rows(summary))
    assert table[f"Pareto front: fitness vs gflops, {len(brute)} of 10 trials"].count("trial ") == len(brute)
    assert table[f"budget gflops <= {BUDGET:g}"].startswith(f"trial {p['chosen']['trial']}: the best fitness")
    doc = (run_dir / "report.html").read_text()
    assert 'id="pareto"' in doc and "Accuracy vs cost" in doc and (run_dir / "evolve" / "pareto.png").is_file()


def test_no_trial_within_the_budget_names_the_closest(cfg_for, tmp_path):
    from core.hyp import default_hyp
    rows = [{"number": n, "state": "COMPLETE", "base": n == 0, "fitness": f, "latency_ms": c, "imgsz": 160,
             **default_hyp()} for n, f, c in ((0, 0.3, 9.0), (1, 0.4, 12.0), (2, 0.2, 8.5), (3, 0.5, 20.0))]
    pd.DataFrame(rows).to_csv(tmp_path / "evolve.csv", index=False)
    cfg = cfg_for("front", sampler="nsga2", objectives=["fitness", "latency_ms"], budget={"latency_ms": 8.0})
    with pytest.raises(StudyError, match=r"no searched trial fits the budget \(no trial fits the budget latency_ms "
                                         r"<= 8: the closest is trial 2 at 8.5 \(fitness 0.2000\)"):
        st.retrain_plan(tmp_path / "evolve.csv", cfg, st.retrain_options(cfg))
    cfg.budget = {"latency_ms": 10.0}
    rows.append({**rows[2], "number": 4, "latency_ms": 7.5})  # as good as trial 2 and cheaper: the budget's choice
    pd.DataFrame(rows).to_csv(tmp_path / "evolve.csv", index=False)
    assert st.retrain_plan(tmp_path / "evolve.csv", cfg, st.retrain_options(cfg))[0]["trial"] == 4
    pd.DataFrame(rows[:4]).to_csv(tmp_path / "evolve.csv", index=False)
    # trial 0 (the base hyp) fits too, but is no candidate: trial 2 is
    plan = st.retrain_plan(tmp_path / "evolve.csv", cfg, st.retrain_options(cfg))  # quick: 3 seeds, base, transfer
    assert [(r["trial"], r["role"]) for r in plan] == [(2, "best")] * 3 + [(0, "base")] * 3
    assert not any(r.get("over_budget") for r in plan) and all(r["imgsz"] == 160 for r in plan)


def test_fitness_only_study_is_unchanged(cfg_for, tmp_path, monkeypatch):
    monkeypatch.setattr(st, "prune_hyp", lambda cfg, run, imgsz=None: (dict(run["hyp"]), "the trials' hyp"))
    cfg = cfg_for("single", trials=4, epochs=2, sampler="tpe", retrain={"epochs": 2, "top_k": 1, "seeds": 1},
                  train=NO_LABELS)
    run_dir = tmp_path / "runs" / "study" / "single"
    code = st.run_study(cfg, run_dir, tmp_path / "runs" / "evolve" / "single", threads=1,
                        launch_fn=in_process_launch, fit=fake_fit,
                        prune_fn=lambda popts: write_prune(Path(popts.project) / popts.name))
    assert code == 0
    study = optuna.load_study(study_name="single", storage=make_storage(None, tmp_path / "runs" / "evolve" / "single"))
    assert len(study.directions) == 1 and study.best_trial.value > 0
    df = pd.read_csv(run_dir / "evolve" / "evolve.csv")
    assert not set(COST_ATTRS) & set(df.columns)
    assert "pareto" not in json.loads((run_dir / "summary.json").read_text())
    assert 'id="pareto"' not in (run_dir / "report.html").read_text()
    assert "imgsz" not in pd.read_csv(run_dir / "retrain" / "retrain.csv")
    # the same study asked for two objectives is refused, not silently reopened with one
    with pytest.raises(StudyError, match="has 1 objective"):
        prepare_study(cfg_for("single", sampler="nsga2", objectives=["fitness", "gflops"]), None,
                      tmp_path / "runs" / "evolve" / "single")


def test_a_budget_changed_on_resume_is_the_one_the_choice_and_plot_use(cfg_for, tmp_path, caplog):
    """The budget is chosen within after the search, so a resumed study takes the study file's new budget (the
    stored config's, read by pareto.png) without calling the trials incomparable."""
    kw = dict(trials=4, objectives=["fitness", "gflops"], imgsz_range=[64, 256], sampler="nsga2")
    study = prepare_study(cfg_for("rebudget", budget={"gflops": 0.1}, **kw), None, tmp_path)
    assert study.user_attrs["config"]["budget"] == {"gflops": 0.1}
    with caplog.at_level("INFO"):
        study = prepare_study(cfg_for("rebudget", budget={"gflops": 0.05}, **kw), None, tmp_path)
    assert study.user_attrs["config"]["budget"] == {"gflops": 0.05}
    assert "budget {'gflops': 0.1} -> {'gflops': 0.05}" in caplog.text
    assert "not comparable" not in caplog.text
