"""GA sampler, search space, study config, storage URL masking: unit tests on in-memory studies."""
from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from core.hyp import HYP_KEYS, default_hyp
from evolve.ga import GASampler, explore_draw, mutate, select_parent
from evolve.samplers import make_sampler
from evolve.space import Gene, SpaceError, base_params, check_base, distributions, load_space
from evolve.storage import mask_url
from evolve.study_config import StudyError, load_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = load_space()
BASE = default_hyp()


def _study_with(trials: list[tuple[TrialState, float | None, dict]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dists = distributions(SPACE)
    for state, value, params in trials:
        p = {**base_params(SPACE, BASE), **params}
        study.add_trial(create_trial(state=state, value=value, params=p, distributions=dists,
                                     intermediate_values={1: value} if state == TrialState.PRUNED else None))
    return study


def _sample(sampler: GASampler, study: optuna.Study) -> dict:
    study.sampler = sampler
    trial = study.ask()
    params = {n: trial.suggest_float(n, d.low, d.high, log=d.log) if isinstance(d, FloatDistribution)
              else trial.suggest_int(n, d.low, d.high) for n, d in distributions(SPACE).items()}
    study.tell(trial, state=TrialState.FAIL)  # not COMPLETE: never a parent of the next sample
    return params


def test_space_file_covers_every_hyp_and_base_is_inside():
    assert list(SPACE) == list(HYP_KEYS)
    fixed = sorted(g.name for g in SPACE.values() if g.gain == 0)
    assert fixed == ["dfl", "fl_gamma", "fliplr", "iou_t", "perspective"]  # dfl: the anchor-free head only
    assert SPACE["anchors"].int and SPACE["anchors"].gain == 2 and SPACE["lr0"].log
    check_base(SPACE, BASE)
    assert len(distributions(SPACE)) == 25


@pytest.mark.parametrize("spec, match", [
    ({"nope": {"gain": 1, "low": 0, "high": 1}}, "unknown hyp 'nope'"),
    ({"lr0": {"gain": 1, "low": 0.1, "high": 0.01}}, "low < high"),
    ({"weight_decay": {"gain": 1, "low": 0.0, "high": 0.1, "log": True}}, "low must be > 0"),
    ({"mosaic": {"gain": 1, "low": 0.0, "high": 2.0}}, r"allowed range \[0.0, 1.0\]"),
    ({"mosaic": {"gain": -1, "low": 0.0, "high": 1.0}}, "gain=-1.0 must be >= 0"),
    ({"mosaic": {"gain": 1, "low": 0.0}}, "missing field 'high'"),
])
def test_space_errors_name_the_key(spec, match):
    with pytest.raises(SpaceError, match=match):
        load_space(spec)


def test_base_outside_bounds_is_an_error():
    space = load_space({"lr0": {"gain": 1, "low": 0.02, "high": 0.1}})
    with pytest.raises(SpaceError, match="'lr0'=0.01 is outside the search bounds"):
        check_base(space, BASE)


def test_ga_is_deterministic_for_a_seed_and_differs_across_trials_and_seeds():
    history = [(TrialState.COMPLETE, 0.3, {"lr0": 0.02}), (TrialState.COMPLETE, 0.5, {"lr0": 0.005}),
               (TrialState.COMPLETE, 0.4, {"mosaic": 0.5})]
    a = [_sample(GASampler(SPACE, BASE, seed=7), _study_with(history)) for _ in range(2)]
    assert a[0] == a[1]
    s = _study_with(history)
    ga = GASampler(SPACE, BASE, seed=7)
    first, second = _sample(ga, s), _sample(ga, s)  # trial numbers 3 and 4
    assert first == a[0] and second != first
    other = _sample(GASampler(SPACE, BASE, seed=8), _study_with(history))
    assert other != a[0]


def test_ga_children_respect_bounds_and_integer_genes():
    # Parents sit on the bounds, so unclipped mutations would leave the space half the time.
    low = {g.name: (int(g.low) if g.int else g.low) for g in SPACE.values() if g.gain > 0}
    high = {g.name: (int(g.high) if g.int else g.high) for g in SPACE.values() if g.gain > 0}
    study = _study_with([(TrialState.COMPLETE, 0.5, low), (TrialState.COMPLETE, 0.6, high)])
    ga = GASampler(SPACE, BASE, seed=0)
    for _ in range(40):
        child = _sample(ga, study)
        for name, v in child.items():
            g = SPACE[name]
            assert g.low <= v <= g.high, (name, v)
        assert isinstance(child["anchors"], int)


def test_mutation_factor_is_clipped_and_gain_zero_never_moves():
    genes = [Gene("a", 1.0, 1e-6, 1e6), Gene("b", 0.0, 1e-6, 1e6), Gene("c", 3.0, 1e-6, 1e6)]
    x = np.array([1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    ratios = np.array([mutate(x, genes, rng) / x for _ in range(2000)])
    assert np.all(ratios[:, 1] == 1.0)                      # gain 0: fixed
    assert ratios.min() >= 0.3 - 1e-12 and ratios.max() <= 3.0 + 1e-12
    assert np.any(ratios[:, 2] == 0.3) and not np.any(ratios[:, 0] == 0.3)  # gain 3 hits the clip, gain 1 can't
    assert np.all(np.any(ratios != 1.0, axis=1))            # every child differs from its parent
    # about mp = 80% of the genes with gain > 0 change in a draw
    assert 0.7 < np.mean(ratios[:, [0, 2]] != 1.0) < 0.9


def test_genes_at_zero_move():
    genes = [SPACE["mixup"], SPACE["degrees"], SPACE["shear"]]
    x = np.zeros(3)
    rng = np.random.default_rng(1)
    kids = np.array([mutate(x, genes, rng) for _ in range(300)])
    for j, g in enumerate(genes):
        moved = kids[:, j][kids[:, j] > 0]
        assert len(moved) > 50, g.name                      # multiplicative-only would give 0 here
        assert moved.max() <= g.high
    # the step scales with the range: degrees (0..45) moves ~45x further than mixup (0..1)
    ratio = np.median(kids[:, 1][kids[:, 1] > 0]) / np.median(kids[:, 0][kids[:, 0] > 0])
    assert 20 < ratio < 100


def test_log_genes_step_in_log_space_and_cross_a_decade():
    lr0 = Gene("lr0", 1.0, 1e-5, 0.05, log=True)
    rng = np.random.default_rng(0)
    kids = np.array([mutate(np.array([0.02]), [lr0], rng)[0] for _ in range(200)])
    assert kids.min() <= 0.002                              # 10x down within 200 draws (a 0.3 factor clip: never)
    assert np.all((kids >= lr0.low) & (kids <= lr0.high))
    # a step is symmetric in log space: about as many children above the parent as below (clipped at 0.05)
    assert 0.35 < np.mean(kids < 0.02) < 0.65
    # most draws stay within a factor 3: a step, not a jump across the range
    assert np.mean(np.abs(np.log(kids / 0.02)) < np.log(3)) > 0.6


def test_exploration_draws_cover_every_gene_and_repeat_for_a_seed():
    genes = [g for g in SPACE.values() if g.gain > 0]
    n = 8
    draws = np.array([explore_draw(genes, 5, i, n, np.random.default_rng([5, i])) for i in range(n)])
    for j, g in enumerate(genes):
        if g.int:
            continue
        q = (np.log(draws[:, j] / g.low) / np.log(g.high / g.low)) if g.log else (draws[:, j] - g.low) / (g.high - g.low)
        assert sorted(np.minimum((q * n).astype(int), n - 1)) == list(range(n)), g.name  # one draw per stratum
    again = explore_draw(genes, 5, 3, n, np.random.default_rng([5, 3]))
    np.testing.assert_array_equal(again, draws[3])
    assert not np.array_equal(explore_draw(genes, 6, 3, n, np.random.default_rng([5, 3])), draws[3])
    with pytest.raises(ValueError, match="outside 0..7"):
        explore_draw(genes, 5, 8, n, np.random.default_rng(0))


def test_explore_replaces_the_first_sampled_children_not_the_enqueued_ones():
    study = _study_with([(TrialState.COMPLETE, 0.5, {})])   # trial 0: the base hyp, complete
    study.enqueue_trial(base_params(SPACE, BASE))          # trial 1: an enqueued noise seed, not a draw
    ga = GASampler(SPACE, BASE, seed=2, explore=3)
    study.sampler = ga
    t1 = study.ask()
    assert ga.draw_index(study, t1._cached_frozen_trial) == 1  # trial 0 (added, not enqueued) counts as a draw
    study.tell(t1, state=TrialState.FAIL)
    kids = [_sample(ga, study) for _ in range(3)]          # trials 2, 3, 4: draws 1, 2, 3 of explore = 3
    genes = ga.genes
    expected = [explore_draw(genes, 2, i, 3, ga.rng(n)) for i, n in ((1, 2), (2, 3))]
    for kid, exp in zip(kids[:2], expected):
        np.testing.assert_allclose([kid[g.name] for g in genes], exp)
    # draw 3 is past the exploration: a child of the only complete trial (the base hyp), box within the clip
    assert 0.3 * BASE["box"] <= kids[2]["box"] <= 3.0 * BASE["box"]
    with pytest.raises(ValueError, match="explore"):
        GASampler(SPACE, BASE, explore=-1)


def test_gain_zero_hyps_are_never_suggested():
    study = _study_with([(TrialState.COMPLETE, 0.5, {})])
    ga = GASampler(SPACE, BASE, seed=0)
    trial = study.ask()
    assert set(ga.infer_relative_search_space(study, trial._cached_frozen_trial)) == \
        {g.name for g in SPACE.values() if g.gain > 0}
    assert "fliplr" not in ga.sample_relative(study, trial._cached_frozen_trial, distributions(SPACE))


def test_parents_come_from_complete_trials_only():
    # box: a multiplicative gene (low > 0, not log), so a child stays within the factor clip of its parent
    study = _study_with([(TrialState.COMPLETE, 0.2, {"box": 0.03}), (TrialState.COMPLETE, 0.4, {"box": 0.04}),
                         (TrialState.PRUNED, 0.9, {"box": 0.15}), (TrialState.FAIL, None, {"box": 0.2})])
    study.add_trial(create_trial(state=TrialState.RUNNING, params={"box": 0.18},
                                 distributions={"box": SPACE["box"].distribution()}))
    values, fitness = GASampler(SPACE, BASE, parents=5).parents(study)
    box = [g.name for g in GASampler(SPACE, BASE).genes].index("box")
    assert fitness.tolist() == [0.4, 0.2]                  # best first, pruned/failed/running excluded
    assert values[:, box].tolist() == [0.04, 0.03]
    assert len(GASampler(SPACE, BASE, parents=1).parents(study)[0]) == 1
    # every child descends from a COMPLETE parent: its box is within the factor clip of 0.03 or 0.04
    ga = GASampler(SPACE, BASE, seed=3)
    for _ in range(20):
        v = _sample(ga, study)["box"]
        assert 0.3 * 0.03 - 1e-12 <= v <= 3.0 * 0.04 + 1e-12


def test_selection_weights_are_hand_computed():
    values = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    fitness = np.array([0.1, 0.2, 0.4])
    w = np.array([1e-6, 0.1 + 1e-6, 0.3 + 1e-6])
    np.testing.assert_allclose(select_parent(values, fitness, "weighted", np.random.default_rng(0)),
                               (values * w[:, None]).sum(0) / w.sum())
    picks = [select_parent(values, fitness, "single", np.random.default_rng(i))[0] for i in range(400)]
    assert picks.count(1.0) <= 2 and 0.65 < picks.count(5.0) / 400 < 0.85   # p = 0.75, 0.25, ~0


def test_without_complete_trials_the_parent_is_the_base_hyp_or_random():
    study = _study_with([])
    child = _sample(GASampler(SPACE, BASE, seed=0), study)
    for name, v in child.items():
        b = BASE[name]
        if b > 0 and not SPACE[name].int and not SPACE[name].log:
            assert 0.3 * b - 1e-12 <= v <= 3.0 * b + 1e-12, name
    rand = _sample(GASampler(SPACE, BASE, seed=0, init="random"), _study_with([]))
    assert rand != child


def test_sampler_factory_and_errors():
    for name in ("ga", "tpe", "random", "nsga2"):
        assert isinstance(make_sampler(name, SPACE, BASE, seed=1), optuna.samplers.BaseSampler)
    with pytest.raises(ValueError, match="unknown sampler 'bogus'"):
        make_sampler("bogus", SPACE, BASE)
    with pytest.raises(ValueError, match="selection"):
        GASampler(SPACE, BASE, selection="best")


def test_study_file_and_overrides(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("epochs: 5\ntrials: 10\nsampler: tpe\n")
    cfg = load_study(f, {"trials": 3, "gpus": "0, 1", "seed": None})
    assert (cfg.name, cfg.epochs, cfg.trials, cfg.sampler, cfg.gpus, cfg.seed) == ("s", 5, 3, "tpe", "0,1", 0)
    f.write_text("epoch: 5\n")
    with pytest.raises(StudyError, match=r"unknown field\(s\) \['epoch'\]"):
        load_study(f)
    with pytest.raises(StudyError, match="'imgsz'=100 must be a multiple of 32"):
        load_study(None, {"imgsz": 100})
    with pytest.raises(StudyError, match="'sampler'='sga'"):
        load_study(None, {"sampler": "sga"})
    assert load_study(None).resolved("model").endswith("studies/models/yolov5-cpu.yaml")


def test_credentials_are_masked():
    assert mask_url("postgresql://bob:s3cr3t@db.example:5432/optuna") == "postgresql://bob:***@db.example:5432/optuna"
    assert "s3cr3t" not in mask_url("mysql+pymysql://u:s3cr3t@h/db?password=s3cr3t&charset=utf8")
    assert mask_url("mysql+pymysql://u:s3cr3t@h/db?password=s3cr3t&charset=utf8").endswith("charset=utf8")
    assert mask_url("sqlite:///runs/x.db") == "sqlite:///runs/x.db"
    assert mask_url("postgresql://bob@h/db") == "postgresql://bob@h/db"
