"""A prune-aware study (`prune_range`): each searched trial finetunes the warm start pruned at its `prune_share`
gene, its cost is the pruned model's, the base hyp's trials stay unpruned, and the retrain finetunes the chosen
trial's pruned start; bad ranges are refused with the field named."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import evolve.study as st
from core.checkpoint import model_from_checkpoint, save_checkpoint
from core.model.yolo import Model
from evolve.prune_gene import STEP, pruned_start
from evolve.study_config import StudyError
from tests.evolve.test_pareto_study import NO_LABELS
from tests.evolve.test_study_report import write_prune
from tests.helpers import REPO, fake_fit

SHARE = re.compile(r"share([0-9.]+)-r")


def share_of(model) -> float:
    found = SHARE.search(str(model))
    return float(found.group(1)) if found else 0.0


def pruning_fit(data, model, hyp, opts, callbacks=None):
    """The fake fit, its fitness falling with the share its start was pruned at; records every start."""
    result = fake_fit(data, model, hyp, opts, callbacks)
    for m in [*result.history, result.best]:
        m["fitness"] *= 1 - share_of(model)
    pruning_fit.starts.append((opts.name, str(model)))
    return result


@pytest.fixture
def start(tmp_path):
    """A warm start with BN gammas to rank: the quick study's model, its gammas spread so each share cuts."""
    model = Model(str(REPO / "studies" / "models" / "yolov5-cpu.yaml"), nc=1)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g)
    return save_checkpoint(tmp_path / "start.pt", model, hyp={"lr0": 0.01})


def test_prune_aware_study_trials_retrain_and_cost(cfg_for, tmp_path, monkeypatch, start):
    monkeypatch.setattr(st, "prune_hyp", lambda cfg, run, imgsz=None: (dict(run["hyp"]), "the trials' hyp"))
    pruning_fit.starts = []
    cfg = cfg_for("pruneaware", trials=8, epochs=2, noise_seeds=2, sampler="nsga2", objectives=["fitness", "gflops"],
                  prune_range=[0.2, 0.5], weights=str(start), budget={"gflops": 0.07}, prune={"round_to": 8},
                  retrain={"epochs": 2, "top_k": 1, "seeds": 1, "base": True}, train=NO_LABELS)
    run_dir = tmp_path / "runs" / "study" / cfg.name
    code = st.run_study(cfg, run_dir, tmp_path / "runs" / "evolve" / cfg.name, threads=1,
                        launch_fn=_launch,
                        fit=pruning_fit, prune_fn=lambda popts: write_prune(Path(popts.project) / popts.name))
    assert code == 0
    df = pd.read_csv(run_dir / "evolve" / "evolve.csv")
    done = df[df.state == "COMPLETE"].set_index("number")
    assert (done[done.base].prune_share == 0).all()  # the reference is the unpruned start
    searched = done[~done.base]
    assert searched.prune_share.between(0.2, 0.5).all() and searched.prune_share.nunique() > 1
    assert all(abs(s / STEP - round(s / STEP)) < 1e-9 for s in searched.prune_share)
    # the cost is the pruned model's: GFLOPs fall as the share rises
    by_share = done.groupby("prune_share").gflops.first()
    assert list(by_share) == sorted(by_share, reverse=True) and by_share.iloc[0] > by_share.iloc[-1]
    # each trial trained from the start pruned at its own share
    trial_starts = [s for name, s in pruning_fit.starts if not name.startswith("trial")]
    assert sorted(share_of(s) for s in trial_starts) == sorted(done.prune_share)
    # one pruned start per share, written once however many trials drew it; kept channels a multiple of 8
    cached = sorted((tmp_path / "runs" / "evolve" / cfg.name / "pruned").iterdir())
    assert sorted(share_of(p) for p in cached) == sorted(set(searched.prune_share) - {0.0})
    convs = [m for m in model_from_checkpoint(cached[-1]).modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.out_channels % 8 == 0 for m in convs[:-3])  # the head's output convs are not pruned
    assert pruned_start(start, 0.0, tmp_path, 8) == str(start)
    summary = json.loads((run_dir / "summary.json").read_text())
    chosen = summary["pareto"]["chosen"]
    assert chosen["prune_share"] == done.loc[chosen["trial"], "prune_share"] and chosen["cost"] <= 0.07
    assert "<th>pruned share</th>" in (run_dir / "report.html").read_text()  # the front table has the gene
    from bench.study_table import rows  # the recorded table names each front point's share
    front = dict(rows(summary))[next(k for k, _ in rows(summary) if k.startswith("Pareto front"))]
    assert f"pruned {chosen['prune_share']:.2f}" in front
    retrain = pd.read_csv(run_dir / "retrain" / "retrain.csv")
    best = retrain[retrain.role == "best"].iloc[0]
    assert best.prune_share == pytest.approx(chosen["prune_share"]) and best.prune_share > 0
    verdict = json.loads((run_dir / "retrain" / "choice.json").read_text())["verdict"]
    assert verdict.startswith(f"trial {int(best.trial)} is below the base hyp by -") and "what the budget costs" in verdict
    started = dict(pruning_fit.starts)[best.run]
    assert share_of(started) == pytest.approx(best.prune_share) and "retrain" in started


def _launch(cfg, storage, run_dir, deadline=None):
    from evolve.launcher import prepare_study
    from evolve.worker import run_worker
    prepare_study(cfg, storage, run_dir)
    run_worker(cfg, run_dir, storage, fit=pruning_fit, log=lambda m: None)
    return 0


@pytest.mark.parametrize("kw, says", [
    ({"prune_range": [0.5, 0.2]}, "0 <= LOW < HIGH < 1"),
    ({"prune_range": [0.0, 1.0]}, "0 <= LOW < HIGH < 1"),
    ({"prune_range": "0.2"}, "must be [LOW, HIGH]"),
    ({"prune_range": [0.0, 0.5], "weights": None}, "warm start"),
    ({"prune_range": [0.0, 0.5], "objectives": ["fitness"], "budget": {}}, "objectives [fitness]"),
])
def test_bad_prune_range_is_refused(cfg_for, kw, says, start):
    base = {"objectives": ["fitness", "gflops"], "sampler": "nsga2", "weights": str(start)}
    with pytest.raises(StudyError, match=re.escape(says)) as e:
        cfg_for("bad", **{**base, **kw})
    assert "prune_range" in str(e.value)
