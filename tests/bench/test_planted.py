"""bench.planted: its tasks are what they claim (valid data, a fix in exactly the planted genes, which the task's
space searches), and its two figures (recovered share, trials to 80%) are computed as documented."""
import math

import numpy as np
import pandas as pd
import pytest

from bench.planted import first_reach, ga_options, recovered_share, sampler_transfer, slug
from bench.planted_tasks import GLYPH_SETS, TASKS, render_glyphs, task_data, task_hyps, task_space
from core.data.config import load_data_config
from evolve.space import check_base, load_space


@pytest.mark.parametrize("name", list(TASKS))
def test_task_is_what_it_claims(name, tmp_path):
    task = TASKS[name]
    hyps = task_hyps(task)
    assert {k for k in hyps["base"] if hyps["base"][k] != hyps["fixed"][k]} == set(task.fix)
    space = load_space(task_space(task))
    for gene in task.fix:  # searched, and both its values inside the bounds
        g = space[gene]
        assert g.gain > 0 and g.low <= hyps["base"][gene] <= g.high and g.low <= hyps["fixed"][gene] <= g.high
    check_base(space, hyps["base"])
    data = task_data(task, root=tmp_path, n_train=3, n_val=2, seed=5)
    cfg = load_data_config(str(data))
    assert list(cfg["names"]) == list(task.names)
    labels = sorted((tmp_path / name / "set" / "labels" / "train").glob("*.txt"))
    assert len(labels) == 3 and len(list((tmp_path / name / "set" / "images" / "val").glob("*.jpg"))) == 2
    rows = np.array([list(map(float, line.split())) for f in labels for line in f.read_text().splitlines()])
    assert len(rows) and rows[:, 0].max() < len(task.names) and ((rows[:, 1:] > 0) & (rows[:, 1:] <= 1)).all()


def test_mirror_is_deterministic_and_labels_every_class():
    a, la = render_glyphs(np.random.default_rng(3), GLYPH_SETS["mirror"])
    b, lb = render_glyphs(np.random.default_rng(3), GLYPH_SETS["mirror"])
    assert np.array_equal(a, b) and np.array_equal(la, lb) and a.shape == (96, 96, 3)
    classes = {int(c) for i in range(40) for c in render_glyphs(np.random.default_rng(i), GLYPH_SETS["mirror"])[1][:, 0]}
    assert classes == {0, 1, 2, 3}


def test_recovered_share_on_hand_made_numbers():
    base = {1: 0.10, 2: 0.12, 3: 0.11}
    winner = {1: 0.18, 2: 0.22, 3: 0.18}  # diffs 0.08, 0.10, 0.07: mean 0.25/3, sd 0.0152753
    r = recovered_share(winner, base, planted=0.10)
    assert r["share"] == pytest.approx(0.25 / 3 / 0.10, rel=1e-12)
    assert r["share_sd"] == pytest.approx(math.sqrt(((0.08 - 0.25 / 3) ** 2 + (0.1 - 0.25 / 3) ** 2 +
                                                     (0.07 - 0.25 / 3) ** 2) / 2) / 0.10, rel=1e-9)
    assert r["t"] == pytest.approx((0.25 / 3) / (r["share_sd"] * 0.10 / math.sqrt(3)), rel=1e-9)
    assert r["met"] and r["above_noise"]
    assert not recovered_share({1: 0.11, 2: 0.12, 3: 0.11}, base, planted=0.10)["met"]  # share 0
    assert math.isnan(recovered_share(winner, base, planted=-0.01)["share"])  # no planted gain, no share


def test_first_reach_counts_completion_order_and_skips_the_base_trial():
    t = pd.Timestamp("2026-01-01 00:00:00")
    s = pd.Timedelta(seconds=1)
    df = pd.DataFrame({"number": [0, 1, 2, 3, 4], "state": ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"],
                       "fitness": [0.10, 0.15, 0.50, 0.19, 0.30],
                       "datetime_start": [t, t, t + 5 * s, t + 10 * s, t + 12 * s],
                       "datetime_complete": [t + 10 * s, t + 12 * s, t + 13 * s, t + 30 * s, t + 20 * s]})
    # gain 0.1: 80% is 0.08 above trial 0's 0.10; trial 4 (0.30) completes before trial 3 (0.19), the failed 2 does not count
    assert first_reach(df, 0.08) == {"trial": 4, "trials": 3, "seconds": 20.0}
    assert first_reach(df, 0.04) == {"trial": 1, "trials": 2, "seconds": 12.0}
    assert first_reach(df, 0.5)["trial"] is None and first_reach(df, -0.1)["trial"] is None


def test_sampler_spec_sets_ga_options_and_names_a_folder():
    quick = {"parents": 5, "init": "base", "explore": 4}
    assert ga_options(quick, "") == quick
    assert ga_options(quick, "random") == {**quick, "init": "random"}
    assert ga_options(quick, "explore=0/sigma=0.5") == {**quick, "explore": 0, "sigma": 0.5}
    with pytest.raises(SystemExit, match="'sideways'"):
        ga_options(quick, "sideways")
    assert slug("ga:explore=0/sigma=0.5") == "ga-explore0-sigma0.5" and slug("tpe+hyperband") == "tpe-hyperband"


def test_sampler_transfer_ranks_winner_and_transfer_runs_of_one_sampler_only():
    # ga: winner (trial 5, 3 seeds, mean 0.30) and 3 transfer trials; tpe's rows must not count
    rows = [("ga", 5, s, 0.40, v) for s, v in ((1, 0.29), (2, 0.30), (3, 0.31))]
    rows += [("ga transfer", 7, 1, 0.35, 0.20), ("ga transfer", 2, 1, 0.20, 0.25), ("ga transfer", 9, 1, 0.10, 0.05)]
    rows += [("tpe", 4, 1, 0.9, 0.0), ("tpe transfer", 3, 1, 0.0, 0.9)]
    df = pd.DataFrame(rows, columns=["role", "trial", "seed", "trial_fitness", "objective"])
    t = sampler_transfer(df, "ga")
    # trial ranks 4, 3, 2, 1 (by 0.40, 0.35, 0.20, 0.10); retrained ranks 4, 2, 3, 1: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert t["n"] == 4 and t["rho"] == pytest.approx(0.8)
    assert sampler_transfer(df, "random")["n"] == 0


def test_the_headline_row_is_the_first_sampler_with_every_task_and_the_target_count():
    from bench.planted import headline_rows
    s = lambda share, met, secs: {"share": share, "share_sd": 0.1, "p": 0.01, "met": met, "evolve_s": secs}
    task = lambda ga, tpe: {"seeds": [1, 2, 3], "trial_epochs": 5, "samplers": {"ga": ga, "tpe": tpe}}
    res = {"trials": 12, "tasks": {"lr": task(s(1.2, True, 30), s(0.5, False, 40)),
                                   "mirror": task(s(0.6, False, 42), s(0.9, True, 41))}}
    [(label, figure)] = headline_rows(res).items()
    assert label.endswith(": ga") and "12 trials of 5 epochs" in label and "3 seeds" in label
    assert figure.startswith("lr 120% ± 10% (p 0.010), mirror 60% ± 10%") and "met on 1 of 2" in figure
    assert figure.endswith("a study 30-42 s")
    assert headline_rows({"trials": 12, "tasks": {"lr": {"seeds": [1], "trial_epochs": 5}}}) == {}
