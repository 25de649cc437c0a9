"""The study measures its own transfer (evolve/transfer.py): trials spread over the ranking are retrained beside
the candidates, and Spearman's rho between trial and retrained values is reported with its n, with a warning
when the ranking is not to be trusted. Fake fits only: no training."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from core.hyp import default_hyp, load_hyp
from evolve import budget
from evolve import study as st
from evolve.html_report import build_report
from evolve.storage import make_storage
from evolve.study_config import load_study
from evolve.transfer import LOW_RHO, spearman, spread_picks, transfer_line, transfer_summary
from tests.helpers import REPO

QUICK = REPO / "studies" / "quick.yaml"
optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---- which trials -------------------------------------------------------------------------------------------

def test_spread_picks_span_the_ranking_down_to_the_last_and_avoid_the_candidates():
    ranking = list(range(100, 109))  # 9 trials, best first
    assert spread_picks(ranking, {100}, 4) == [102, 104, 106, 108]  # ranks 2, 4, 6, 8 (+ rank 0: the candidate)
    # top-3 candidates: rank 2 is taken, its nearest free rank is 3
    assert spread_picks(ranking, {100, 101, 102}, 4) == [103, 104, 106, 108]
    assert spread_picks(ranking, {100}, 1) == [108]  # one transfer run: the far end of the ranking
    assert spread_picks(ranking[:4], {100}, 5) == [101, 102, 103]  # more asked than there are: all the others
    assert spread_picks(ranking, {100}, 0) == []


def _evolve_csv(path: Path) -> Path:
    """Base-hyp trials 0-2 (noise seeds); searched trials 3-12 ranked by number (fitness 1 - 0.01 n); trial 8
    repeats trial 4's hyp and trial 11 is the base hyp itself."""
    base = load_hyp(None)
    rows = []
    for n in range(13):
        hyp = dict(base) if n < 3 or n == 11 else {**base, "lr0": 0.02 + 0.001 * (4 if n == 8 else n)}
        rows.append({"number": n, "state": "COMPLETE", "base": n < 3, "fitness": 0.5 if n < 3 else 1 - 0.01 * n,
                     **hyp})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_retrain_plan_adds_transfer_trials_spread_over_the_ranking_without_duplicate_hyps(tmp_path):
    cfg = load_study(QUICK, {"retrain": {"epochs": 2, "top_k": 1, "seeds": 2, "base": True, "transfer": 4}})
    plan = st.retrain_plan(_evolve_csv(tmp_path / "evolve.csv"), cfg, st.retrain_options(cfg))
    # distinct hyps best first: 3 (the candidate), 4, 5, 6, 7, 9, 10, 12 (8 repeats 4, 11 is the base hyp);
    # ranks 7/4 j rounded = 2, 4, 5, 7 -> trials 5, 7, 9, 12, each with the candidates' first seed only
    assert [(r["trial"], r["role"], r["seed"]) for r in plan] == [
        (3, "best", 1), (3, "best", 2), (0, "base", 1), (0, "base", 2),
        (5, "transfer", 1), (7, "transfer", 1), (9, "transfer", 1), (12, "transfer", 1)]
    assert [r["name"] for r in plan[4:]] == ["trial5_seed1", "trial7_seed1", "trial9_seed1", "trial12_seed1"]
    assert [r["trial_fitness"] for r in plan[4:]] == pytest.approx([0.95, 0.93, 0.91, 0.88])
    no_transfer = load_study(QUICK, {"retrain": {"epochs": 2, "top_k": 1, "seeds": 2, "base": True}})
    assert [r["trial"] for r in st.retrain_plan(tmp_path / "evolve.csv", no_transfer,
                                                st.retrain_options(no_transfer))] == [3, 3, 0, 0]  # control
    with pytest.raises(st.StudyError, match="retrain.transfer=-1"):
        st.retrain_options(load_study(None, {"retrain": {"transfer": -1}}))


def test_a_deadline_drops_the_transfer_runs_before_any_candidate_seed(tmp_path):
    csv = _evolve_csv(tmp_path / "evolve.csv")
    pd.read_csv(csv).assign(epochs=2, seconds=10.0).to_csv(csv, index=False)  # 5 s an epoch: 10 s a 2-epoch run
    cfg = load_study(QUICK, {"retrain": {"epochs": 2, "top_k": 1, "seeds": 2, "base": True, "transfer": 4}})
    plan = st.retrain_plan(csv, cfg, st.retrain_options(cfg))
    # 45 s, one at a time: the 4 candidate and base runs fit (40 s), not the 4 transfer runs too
    kept = st.retrain_within(plan, budget.Deadline(time.time() + 45, "test"), csv, 2, 1)
    assert [(r["trial"], r["seed"]) for r in kept] == [(3, 1), (3, 2), (0, 1), (0, 2)]
    assert st.retrain_within(plan, budget.Deadline(time.time() + 200, "test"), csv, 2, 1) == plan  # control


# ---- Spearman -----------------------------------------------------------------------------------------------

def test_spearman_with_ties_matches_the_hand_computed_value():
    # x ranks 1, 2.5, 2.5, 4; y ranks 1, 3, 2, 4; both mean 2.5: sum dx dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5
    assert spearman([0.1, 0.2, 0.2, 0.3], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(4.5 / math.sqrt(4.5 * 5), abs=1e-15)
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0, abs=1e-15)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0, abs=1e-15)
    # without ties: the textbook 1 - 6 sum d^2 / (n (n^2 - 1)); d = 1-2, 2-4, 3-1, 4-5, 5-3: sum d^2 = 14
    assert spearman([10, 20, 30, 40, 50], [0.2, 0.4, 0.1, 0.5, 0.3]) == pytest.approx(1 - 6 * 14 / (5 * 24), abs=1e-15)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5])) and math.isnan(spearman([1], [2]))


def _retrain_frame(points: list[tuple[int, str, list[float], float]]) -> pd.DataFrame:
    """retrain.csv rows from (trial, role, objective per seed, trial fitness)."""
    rows = [{"trial": t, "role": role, "seed": s + 1, "epochs": 1, "trial_fitness": tf, "P": 0.5, "R": 0.5,
             "mAP50": 0.5, "mAP50-95": v, "fitness": v + 1, "objective": v, "best_epoch": 0, "seconds": 1.0,
             "run": f"trial{t}_seed{s + 1}"} for t, role, values, tf in points for s, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_retrained_value_is_the_mean_over_seeds_and_the_warning_follows_rho_and_n():
    # trial 3's first seed alone (0.10) would rank it last; the mean over seeds (0.40) ranks it first
    agree = _retrain_frame([(3, "best", [0.10, 0.70], 0.9), (0, "base", [0.30, 0.32], 0.6),
                            (5, "transfer", [0.35], 0.8), (7, "transfer", [0.20], 0.4), (9, "transfer", [0.25], 0.5)])
    t = transfer_summary(agree)
    assert [p["retrained"] for p in t["points"]] == pytest.approx([0.40, 0.31, 0.35, 0.20, 0.25])
    assert t["rho"] == pytest.approx(1.0, abs=1e-15) and t["n"] == 5 and t["spread"] == 3 and t["warning"] is None
    assert "rho +1.00" in transfer_line(t) and "WARNING" not in transfer_line(t)

    disagree = agree.assign(objective=agree.objective.map({0.10: 0.0, 0.70: 0.0, 0.35: 0.5, 0.20: 0.6, 0.25: 0.3}
                                                          ).fillna(agree.objective))
    t = transfer_summary(disagree)  # retrained 0.0, 0.31, 0.5, 0.6, 0.3 against 0.9, 0.6, 0.8, 0.4, 0.5
    # ranks 1, 3, 4, 5, 2 against 5, 3, 4, 1, 2: sum dx dy = -4 + 0 + 1 - 4 + 1 = -6 over 10
    assert t["rho"] == pytest.approx(-0.6, abs=1e-15)
    assert t["rho"] < 0.5 and LOW_RHO in t["warning"] and f"WARNING: {LOW_RHO}" in transfer_line(t)

    few = transfer_summary(agree[agree.trial.isin([3, 0, 5])])  # rho +1 but over 3 points: cannot tell
    assert few["rho"] == pytest.approx(1.0) and few["n"] == 3 and "too few retrained trials" in few["warning"]


def test_transfer_runs_are_never_candidates_for_pruning(tmp_path):
    df = _retrain_frame([(3, "best", [0.30, 0.32], 0.9), (0, "base", [0.30, 0.31], 0.5),
                         (9, "transfer", [0.90], 0.6)])  # the highest retrain, on one seed: not a candidate
    df.to_csv(tmp_path / "retrain.csv", index=False)
    choice = st.choose_candidate(tmp_path / "retrain.csv")
    assert choice["chosen"] == 3 and [c["trial"] for c in choice["candidates"]] == [3, 0]
    assert choice["candidates"][0]["paired_vs_base"]["tested"] == 1  # Holm over the candidates only


def test_the_report_warns_only_when_the_ranking_does_not_hold(tmp_path):
    for name, retrained in (("holds", [0.40, 0.31, 0.35, 0.20, 0.25]), ("fails", [0.20, 0.40, 0.25, 0.35, 0.31])):
        run_dir = tmp_path / name
        (run_dir / "retrain").mkdir(parents=True)
        _retrain_frame([(t, role, [v], tf) for (t, role, tf), v in zip(
            [(3, "best", 0.9), (0, "base", 0.6), (5, "transfer", 0.8), (7, "transfer", 0.4), (9, "transfer", 0.5)],
            retrained)]).to_csv(run_dir / "retrain" / "retrain.csv", index=False)
        doc = build_report(run_dir).read_text()
        section = doc.split('<section id="transfer">')[1].split("</section>")[0]
        assert "n = 5" in section and (run_dir / "retrain" / "transfer.png").is_file()
        assert ('class="warn"' in section and LOW_RHO in section) == (name == "fails"), section
    assert "rho +1.00, n = 5" in (tmp_path / "holds" / "report.html").read_text()


# ---- the whole study: summary.json, report, resume -----------------------------------------------------------

LR0 = {n: 0.01 + 0.001 * n for n in range(3, 11)}  # the base hyp's lr0 is 0.01
TRIAL_FITNESS = {0: 0.50, 1: 0.51, 2: 0.49, 3: 0.64, 4: 0.62, 5: 0.60, 6: 0.58, 7: 0.56, 8: 0.54, 9: 0.52, 10: 0.50}


class Fakes:
    """A journal of 3 base-hyp trials and 8 searched ones; a fit whose retrained value falls with lr0: it orders
    the searched trials as their trial fitness does, but puts the base hyp (lowest lr0, a low trial value) first;
    it raises on the run named in `fail_on`, as an interrupted retrain stops."""

    def __init__(self):
        self.fits: list[str] = []
        self.fail_on: str | None = None

    def launch(self, cfg, storage, run_dir, **kwargs):
        if (Path(run_dir) / "journal.log").exists():
            return 0
        study = optuna.create_study(study_name=cfg.name, storage=make_storage(None, run_dir), direction="maximize")
        study.set_user_attr("base_hyp", default_hyp())
        dist = {"lr0": FloatDistribution(1e-4, 0.1, log=True)}
        for n, value in TRIAL_FITNESS.items():
            base = n < 3
            ua = {"epochs": 2, "seconds": 1.0, "base": base, **({"noise_seed": n, "train_seed": n} if base else {})}
            study.add_trial(create_trial(state=TrialState.COMPLETE, value=value, params={} if base else {"lr0": LR0[n]},
                                         distributions={} if base else dist, user_attrs=ua))
        return 0

    def fit(self, data, model, hyp, opts):
        if opts.name == self.fail_on:
            raise KeyboardInterrupt(opts.name)
        self.fits.append(opts.name)
        d = Path(opts.project) / opts.name
        d.mkdir(parents=True)
        (d / "best.pt").write_bytes(b"fake")
        value = 0.5 - 10 * hyp["lr0"] + 0.001 * opts.seed
        best = {"epoch": 0, "P": 0.5, "R": 0.5, "mAP50": 0.5, "mAP50-95": value, "fitness": value}
        return SimpleNamespace(best=best, history=[best] * opts.epochs, best_path=d / "best.pt",
                               stop_reason="completed")


def test_study_reports_transfer_in_summary_and_report_and_resume_keeps_finished_transfer_runs(tmp_path, capsys):
    fakes = Fakes()
    cfg = load_study(None, {"name": "tr", "retrain": {"epochs": 1, "top_k": 1, "seeds": 2, "base": True,
                                                       "transfer": 3}})
    run_dir, evolve_dir = tmp_path / "study" / "tr", tmp_path / "evolve" / "tr"

    def run() -> int:
        return st.run_study(cfg, run_dir, evolve_dir, threads=1, launch_fn=fakes.launch, fit=fakes.fit,
                            prune_fn=lambda popts: None)

    # searched ranking 3 ... 10: transfer ranks 7/3 j rounded = 2, 5, 7 -> trials 5, 8, 10
    fakes.fail_on = "trial8_seed1"  # interrupted after the candidates, the base and the first transfer run
    with pytest.raises(KeyboardInterrupt):
        run()
    assert fakes.fits == ["trial3_seed1", "trial3_seed2", "trial0_seed1", "trial0_seed2", "trial5_seed1"]
    fakes.fail_on = None
    assert run() == 0
    assert fakes.fits[5:] == ["trial8_seed1", "trial10_seed1"]  # resumed: only the unfinished ones
    out = capsys.readouterr().out
    assert "transfer: Spearman rho +0.21 between trial and retrained objective over n = 5" in out
    assert f"WARNING: {LOW_RHO}" in out

    summary = json.loads((run_dir / "summary.json").read_text())
    t = summary["transfer"]
    assert t["n"] == 5 and t["spread"] == 3 and [p["trial"] for p in t["points"]] == [3, 0, 5, 8, 10]
    # retrained 0.5 - 10 lr0 + 0.001 seed: trial 3 (seeds 1, 2) 0.3715, the base (lr0 0.01) 0.4015, trials 5, 8,
    # 10 (seed 1) 0.351, 0.321, 0.301. Trial fitness 0.64, 0.50, 0.60, 0.54, 0.50: the base ties trial 10.
    # Ranks x 5, 1.5, 4, 3, 1.5 and y 4, 5, 3, 2, 1 (means 3): sum dx dy = 2 - 3 + 0 + 0 + 3 = 2, dx^2 9.5, dy^2 10
    assert [p["trial_fitness"] for p in t["points"]] == [0.64, 0.50, 0.60, 0.54, 0.50]
    assert [p["retrained"] for p in t["points"]] == pytest.approx([0.3715, 0.4015, 0.351, 0.321, 0.301], abs=1e-12)
    assert t["rho"] == pytest.approx(2 / math.sqrt(9.5 * 10), abs=1e-12) and LOW_RHO in t["warning"]
    assert [c["trial"] for c in json.loads((run_dir / "retrain" / "choice.json").read_text())["candidates"]] == [3, 0]
    doc = (run_dir / "report.html").read_text()
    assert "rho +0.21, n = 5" in doc and 'class="warn"' in doc and (run_dir / "retrain" / "transfer.png").is_file()

    assert run() == 0 and len(fakes.fits) == 7  # done: nothing is retrained again


def test_study_table_records_rho_n_and_the_warning(tmp_path):
    from bench.study_table import TRANSFER_HEADLINE, headline, rows
    from evolve.summary import write_json_atomic

    frame = _retrain_frame([(3, "best", [0.0], 0.9), (0, "base", [0.31], 0.6), (5, "transfer", [0.5], 0.8),
                            (7, "transfer", [0.6], 0.4), (9, "transfer", [0.3], 0.5)])
    write_json_atomic(tmp_path / "summary.json", {"transfer": transfer_summary(frame)})
    table = dict(rows(json.loads((tmp_path / "summary.json").read_text())))
    line = table["transfer: trials 3, 0, 5, 7, 9"]
    assert line.startswith("Spearman rho -0.60 between trial and retrained objective over n = 5") and LOW_RHO in line
    assert headline(tmp_path)[TRANSFER_HEADLINE] == "Spearman rho -0.60 over n = 5 retrained trials"
    # all retrained values tied: rho is NaN, null in summary.json, and said to be undefined
    write_json_atomic(tmp_path / "summary.json", {"transfer": transfer_summary(frame.assign(objective=0.3))})
    line = dict(rows(json.loads((tmp_path / "summary.json").read_text())))["transfer: trials 3, 0, 5, 7, 9"]
    assert "rho undefined" in line and "WARNING: the rank correlation is undefined" in line
    assert headline(tmp_path)[TRANSFER_HEADLINE].startswith("Spearman rho undefined")
