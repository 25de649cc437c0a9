"""The study's prune phase trains the chosen hyp at the mosaic its trials trained with (evolve/prune_hyp.py): the
pipeline's own AutoMosaic, applied to the prune hyp, lands on the retrain run's mosaic, not on gene x the chosen
hyp's factor."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from core.hyp import load_hyp
from evolve import study as st
from evolve.prune_hyp import prune_hyp
from evolve.storage import make_storage
from evolve.study_config import load_study
from tests.helpers import REPO, automosaic_on

QUICK = REPO / "studies" / "quick.yaml"
IMGSZ = 96


def _pipeline_mosaic(data, hyp):
    """What prune.pipeline's stages train with: AutoMosaic on the hyp they are given (core.train)."""
    return automosaic_on(data, hyp, IMGSZ)


def test_the_pipeline_trains_the_chosen_hyp_at_the_trials_mosaic(medium_data):
    cfg = load_study(QUICK, {"name": "p", "data": medium_data, "base": {}, "imgsz": IMGSZ})
    base = load_hyp(cfg.resolved("hyp"))
    chosen = {**base, "mosaic": 0.8, "scale": 0.7}  # zooms out further than the base (0.5): fewer fragments
    study_factor = _pipeline_mosaic(medium_data, base).factor
    used = 0.8 * study_factor  # how the trial and its retrains trained (evolve/train_setup.py)
    naive = _pipeline_mosaic(medium_data, chosen)
    assert naive.mosaic == pytest.approx(0.8 * naive.factor) and abs(naive.mosaic - used) > 0.05  # the bug: gene x own factor
    hyp, note = prune_hyp(cfg, {"hyp": chosen, "mosaic": used})
    assert _pipeline_mosaic(medium_data, hyp).mosaic == pytest.approx(used, rel=1e-9)
    assert {k: v for k, v in hyp.items() if k != "mosaic"} == {k: v for k, v in chosen.items() if k != "mosaic"}
    assert "the mosaic the trials trained with" in note


def test_a_mosaic_the_pipeline_cannot_reach_is_clipped_to_1_and_said(medium_data):
    cfg = load_study(QUICK, {"name": "p", "data": medium_data, "base": {}, "imgsz": IMGSZ})
    chosen = {**load_hyp(cfg.resolved("hyp")), "mosaic": 1.0, "degrees": 20.0}  # rotations cut objects
    factor = _pipeline_mosaic(medium_data, chosen).factor
    assert 0 < factor < 0.9
    hyp, note = prune_hyp(cfg, {"hyp": chosen, "mosaic": 0.95})
    assert hyp["mosaic"] == 1.0 and "the trials trained with 0.950" in note


def test_studies_without_a_recorded_mosaic_and_mosaic_0_pass_through(medium_data):
    cfg = load_study(QUICK, {"name": "p", "data": medium_data, "base": {}, "imgsz": IMGSZ})
    chosen = {**load_hyp(cfg.resolved("hyp")), "mosaic": 0.7}
    assert prune_hyp(cfg, {"hyp": chosen})[0] == chosen
    assert prune_hyp(cfg, {"hyp": chosen, "mosaic": 0.0})[0]["mosaic"] == 0.0


def test_run_study_hands_the_pipeline_the_prune_hyp(medium_data, tmp_path):
    """Wiring: evolve.study writes prune_hyp.yaml from the chosen retrain run and prunes with it."""
    cfg = load_study(QUICK, {"name": "pm", "data": medium_data, "base": {}, "imgsz": IMGSZ, "trials": 2,
                             "noise_seeds": 0, "retrain": {"epochs": 1, "top_k": 1, "seeds": 1, "base": False}})
    base = load_hyp(cfg.resolved("hyp"))
    factor = _pipeline_mosaic(medium_data, base).factor
    run_dir, evolve_dir = tmp_path / "study", tmp_path / "evolve"

    def launch(cfg, storage, run_dir, **kwargs):  # trial 0: the base hyp; trial 1: scale 0.7, the winner
        study = optuna.create_study(study_name=cfg.name, storage=make_storage(None, run_dir), direction="maximize")
        study.set_user_attr("base_hyp", base)
        dist = {"scale": FloatDistribution(0.0, 0.9)}
        for n, (params, value) in enumerate((({}, 0.3), ({"scale": 0.7}, 0.5))):
            ua = {"epochs": 1, "seconds": 1.0, "base": n == 0, "mosaic_used": base["mosaic"] * factor,
                  **({"noise_seed": 0, "train_seed": 0} if n == 0 else {})}
            study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params=params,
                                         distributions={} if n == 0 else dist, user_attrs=ua))
        return 0

    def fit(data, model, hyp, opts):
        d = Path(opts.project) / opts.name
        d.mkdir(parents=True)
        (d / "best.pt").write_bytes(b"fake")
        best = {"epoch": 0, "P": 0.5, "R": 0.5, "mAP50": 0.5, "mAP50-95": 0.4, "fitness": 0.4}
        return SimpleNamespace(best=best, history=[best], best_path=d / "best.pt", stop_reason="completed")

    seen = []
    st.run_study(cfg, run_dir, evolve_dir, threads=1, launch_fn=launch, fit=fit, prune_fn=seen.append)
    assert len(seen) == 1 and Path(seen[0].hyp).name == "prune_hyp.yaml"
    hyp = load_hyp(seen[0].hyp)
    assert hyp["scale"] == 0.7
    assert _pipeline_mosaic(medium_data, hyp).mosaic == pytest.approx(base["mosaic"] * factor, rel=1e-6)
