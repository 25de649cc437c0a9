"""Evolution that measures something: the study's optimizer is respected, the noise floor is measured,
the pruned candidate is chosen by its seed mean, and what would fail every trial fails before any trial."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from core.hyp import load_hyp
from evolve.__main__ import main as evolve_main
from evolve.base_run import ensure_base_run
from evolve.ga import mutate
from evolve.launcher import prepare_study
from evolve.objective import objective_value
from evolve.report import write_outputs
from evolve.samplers import make_pruner, make_sampler, worker_seed
from evolve.space import load_space
from evolve.storage import make_storage
from evolve.study import choose_candidate, retrain_options, retrain_plan, run_retrain
from evolve.study_config import StudyError, load_study
from evolve.worker import WorkerSetupError, run_worker
from tests.helpers import REPO, fake_fit

QUICK = REPO / "studies" / "quick.yaml"
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def study_for(tmp_path, monkeypatch):
    """load_study(quick.yaml) in a temp cwd, with a data yaml the fake fit never reads; no base run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")

    def make(name: str, **kw):
        return load_study(QUICK, {"name": name, "data": "data.yaml", "base": {}, "noise_seeds": 0, **kw})
    return make


def _trials(cfg, run_dir):
    return optuna.load_study(study_name=cfg.name, storage=make_storage(None, run_dir)).get_trials()


# ---- the optimizer is the study's, and searched genes reach the trainer unchanged ---------------------------

def test_optimizer_auto_is_refused_with_the_reason():
    with pytest.raises(StudyError, match="train.optimizer='auto'.*replace the searched"):
        load_study(QUICK, {"train": {"optimizer": "auto"}})


def test_searched_genes_reach_fit_as_suggested(study_for):
    seen = []

    def recording_fit(data, model, hyp, opts, callbacks=None):
        seen.append((dict(hyp), opts.optimizer))
        return fake_fit(data, model, hyp, opts, callbacks)

    cfg = study_for("adamw", trials=3, epochs=1)
    assert cfg.train["optimizer"] == "AdamW"  # the shipped quick study names its optimizer
    run_dir = Path("runs/evolve/adamw")
    prepare_study(cfg, None, run_dir)
    run_worker(cfg, run_dir, fit=recording_fit, log=lambda m: None)
    trials = _trials(cfg, run_dir)
    assert len(seen) == 3
    for t, (hyp, optimizer) in zip(trials, seen):
        assert optimizer == "AdamW"
        for name in ("lr0", "momentum", "warmup_bias_lr"):
            if name in t.params:
                assert hyp[name] == t.params[name]  # no resolution step replaced it
    from core.optim import resolve_auto
    hyp = load_hyp(cfg.resolved("hyp"))
    assert resolve_auto("AdamW", hyp, nc=6, optimizer_steps=100) == ("AdamW", hyp)


# ---- noise floor -------------------------------------------------------------------------------------------

def test_noise_seeds_are_trials_of_the_base_hyp_and_gain_is_in_sd_units(study_for):
    cfg = study_for("noise", trials=6, epochs=2, noise_seeds=3)
    run_dir = Path("runs/evolve/noise")
    prepare_study(cfg, None, run_dir)
    run_worker(cfg, run_dir, fit=fake_fit, log=lambda m: None)
    study = optuna.load_study(study_name="noise", storage=make_storage(None, run_dir))
    trials = study.get_trials()
    base = [t for t in trials if t.user_attrs.get("base")]
    assert [t.number for t in base] == [0, 1, 2]
    assert [t.user_attrs["seed"] for t in base] == [cfg.seed, cfg.seed + 101, cfg.seed + 102]
    assert all(t.params == trials[0].params for t in base)
    assert len({t.value for t in base}) == 3  # the fake's fitness moves with the seed
    write_outputs(study, run_dir, plots=False)
    df = pd.read_csv(run_dir / "evolve.csv")
    assert df.noise.tolist() == [True, True, True, False, False, False]
    values = [t.value for t in base]
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    for t in trials:
        row = df[df.number == t.number].iloc[0]
        assert row.gain_sd == pytest.approx((t.value - mean) / sd)


def test_noise_seeds_must_fit_the_budget():
    with pytest.raises(StudyError, match="noise_seeds"):
        load_study(QUICK, {"noise_seeds": 8, "trials": 8})
    with pytest.raises(StudyError, match="noise_seeds"):
        load_study(QUICK, {"noise_seeds": 1})


# ---- objective -----------------------------------------------------------------------------------------------

def test_objective_value_best_last_and_mean_of_last_k():
    history = [{"fitness": f} for f in (0.1, 0.4, 0.2, 0.3)]
    assert objective_value(history, "best") == 0.4
    assert objective_value(history, "last") == 0.3
    assert objective_value(history, "mean_last_2") == pytest.approx(0.25)
    assert objective_value(history, "mean_last_9") == pytest.approx(0.25)  # fewer epochs than K: all of them
    with pytest.raises(StudyError, match="objective"):
        load_study(QUICK, {"objective": "median"})


# ---- retrain: choose by seed mean, compare paired with the base --------------------------------------------

def _retrain_csv(path: Path, rows: list[tuple]) -> Path:
    df = pd.DataFrame(rows, columns=["trial", "role", "seed", "fitness", "trial_fitness"])
    df["run"] = [f"trial{t}_seed{s}" for t, s in zip(df.trial, df.seed)]
    df.to_csv(path, index=False)
    return path


def test_pruned_candidate_is_chosen_by_seed_mean_not_trial_rank(tmp_path):
    csv = _retrain_csv(tmp_path / "retrain.csv", [
        (2, "best", 1, 0.30, 0.50), (2, "best", 2, 0.10, 0.50),      # best in evolution, mean 0.20
        (5, "top-2", 1, 0.25, 0.40), (5, "top-2", 2, 0.23, 0.40),    # mean 0.24
        (0, "base", 1, 0.20, 0.30), (0, "base", 2, 0.21, 0.30)])     # mean 0.205
    choice = choose_candidate(csv)
    assert choice["chosen"] == 5 and choice["chosen_run"] == "trial5_seed1"  # its better seed run
    five = next(c for c in choice["candidates"] if c["trial"] == 5)
    assert five["mean"] == pytest.approx(0.24) and five["sd"] == pytest.approx(math.sqrt(2e-4))
    paired = five["paired_vs_base"]
    assert paired["diffs"] == pytest.approx([0.05, 0.02])
    assert paired["diff_se"] == pytest.approx(statistics.stdev([0.05, 0.02]) / math.sqrt(2))
    # t = 2.33 on 1 degree of freedom (critical 6.31), and the best of 2 candidates: within noise (evolve.noise)
    assert paired["t"] == pytest.approx(0.035 / paired["diff_se"]) and paired["df"] == 1 and paired["tested"] == 2
    assert not paired["above_noise"] and "within seed noise" in choice["verdict"]
    two = next(c for c in choice["candidates"] if c["trial"] == 2)
    assert not two["paired_vs_base"]["above_noise"]  # +0.10 and -0.11: noise


def test_search_bench_scores_retrains_by_the_study_objective_not_best_epoch():
    from bench.search import score_retrain

    # best-epoch fitness says GA wins by 0.05; the objective column (what the study ranks by) says it loses
    df = pd.DataFrame({"role": ["base", "base", "ga", "ga"], "seed": [1, 2, 1, 2],
                       "fitness": [0.20, 0.21, 0.25, 0.26], "objective": [0.19, 0.20, 0.17, 0.18]})
    out = score_retrain(df, ["ga"], "mean_last_3")
    assert out["retrain_value"] == "objective (mean_last_3)" and out["base"]["mean"] == pytest.approx(0.195)
    assert out["ga"]["paired"]["diffs"] == pytest.approx([-0.02, -0.02]) and not out["ga"]["target_met"]
    old = score_retrain(df.drop(columns="objective"), ["ga"], "best")  # a table without the column: fitness
    assert old["retrain_value"] == "fitness" and old["ga"]["target_met"]  # +0.05, 0.255 - 0.007 > 0.205


def test_base_winning_the_retrain_is_said_plainly(tmp_path):
    csv = _retrain_csv(tmp_path / "retrain.csv", [
        (3, "best", 1, 0.20, 0.5), (3, "best", 2, 0.19, 0.5), (0, "base", 1, 0.22, 0.3), (0, "base", 2, 0.21, 0.3)])
    choice = choose_candidate(csv)
    assert choice["chosen"] == 0 and "found nothing better" in choice["verdict"]


def test_retrain_plan_takes_searched_trials_as_candidates_and_the_base_with_the_same_seeds(tmp_path):
    df = pd.DataFrame({"number": [0, 1, 2, 3], "state": ["COMPLETE"] * 4, "base": [True, True, False, False],
                       "fitness": [0.5, 0.6, 0.4, 0.45], **{k: [v] * 4 for k, v in load_hyp(None).items()}})
    df.to_csv(tmp_path / "evolve.csv", index=False)
    cfg = load_study(QUICK, {"retrain": {"epochs": 2, "top_k": 1, "seeds": 2, "base": True}})
    plan = retrain_plan(tmp_path / "evolve.csv", cfg, retrain_options(cfg))
    assert [(r["trial"], r["role"], r["seed"]) for r in plan] == [(3, "best", 1), (3, "best", 2),
                                                                  (0, "base", 1), (0, "base", 2)]


def test_retrain_runs_in_parallel_processes(tmp_path):
    cfg = load_study(QUICK, {"workers": 2, "base": {}, "noise_seeds": 0, "retrain": {"epochs": 2, "top_k": 1, "seeds": 2}})
    plan = [{"trial": t, "role": r, "seed": s, "name": f"trial{t}_seed{s}", "hyp": load_hyp(None), "trial_fitness": 0.1}
            for t, r in ((4, "best"), (0, "base")) for s in (1, 2)]
    csv = run_retrain(cfg, plan, retrain_options(cfg), tmp_path, "cpu", force=False, fit=fake_fit, parallel=True)
    df = pd.read_csv(csv)
    assert df.run.tolist() == [p["name"] for p in plan]
    assert df.fitness.nunique() == 2  # seeds 1 and 2 differ; the same hyp with the same seed repeats
    assert all((tmp_path / p["name"] / "run.json").is_file() for p in plan)


# ---- base run ---------------------------------------------------------------------------------------------------

def test_base_run_is_trained_once_and_redone_when_its_inputs_change(study_for):
    calls = []

    def counting_fit(data, model, hyp, opts, callbacks=None):
        calls.append(opts.epochs)
        return fake_fit(data, model, hyp, opts, callbacks)

    cfg = study_for("based", base={"epochs": 3})
    hyp = load_hyp(cfg.resolved("hyp"))
    weights = ensure_base_run(cfg, hyp, Path("runs/evolve/based"), "cpu", fit=counting_fit, log=lambda m: None)
    assert weights.is_file() and calls == [3]
    assert ensure_base_run(cfg, hyp, Path("runs/evolve/based"), "cpu", fit=counting_fit, log=lambda m: None) == weights
    assert calls == [3]  # cached
    ensure_base_run(cfg, {**hyp, "lr0": hyp["lr0"] / 2}, Path("runs/evolve/based"), "cpu", fit=counting_fit,
                    log=lambda m: None)
    assert calls == [3, 3]


def test_trials_finetune_from_the_base_run(study_for):
    models = []

    def recording_fit(data, model, hyp, opts, callbacks=None):
        models.append(str(model))
        return fake_fit(data, model, hyp, opts, callbacks)

    cfg = study_for("warm", base={"epochs": 2}, trials=2, epochs=1)
    run_dir = Path("runs/evolve/warm")
    ensure_base_run(cfg, load_hyp(cfg.resolved("hyp")), run_dir, "cpu", fit=fake_fit, log=lambda m: None)
    prepare_study(cfg, None, run_dir)
    run_worker(cfg, run_dir, fit=recording_fit, log=lambda m: None)
    assert models == [str(run_dir / "base" / "best.pt")] * 2
    assert all(t.user_attrs["weights_sha256"] for t in _trials(cfg, run_dir))


def test_warm_start_refuses_a_searched_anchor_count(study_for, tmp_path):
    from evolve.preflight import preflight
    space = tmp_path / "space.yaml"
    space.write_text("lr0: {gain: 1, low: 0.0001, high: 0.01, log: true}\nanchors: {gain: 1, low: 2, high: 5, int: true}\n")
    cfg = study_for("anch", base={"epochs": 2}, space=str(space))
    with pytest.raises(StudyError, match="anchors"):
        preflight(cfg, load_space(cfg.resolved("space")), load_hyp(cfg.resolved("hyp")))


def test_anchor_free_study_searches_only_genes_its_loss_reads(study_for):
    """The anchor-free head refuses anchor and objectness genes by name, its own space (box, cls, dfl) passes,
    and the anchor-based head refuses a searched dfl."""
    from evolve.preflight import preflight
    from evolve.space import SpaceError, evolved
    af_model = str(REPO / "studies" / "models" / "yolov5-cpu-af.yaml")
    af_space = str(REPO / "studies" / "space-adamw-af.yaml")
    cfg = study_for("af", model=af_model)  # the quick study's space: anchor_t, obj, obj_pw, cls_pw searched
    with pytest.raises(SpaceError, match=r"anchor-free head \(DetectAF\).* so cls_pw, obj, obj_pw, anchor_t would be "
                                         r"searched for nothing: set their gain to 0"):
        preflight(cfg, load_space(cfg.resolved("space")), load_hyp(cfg.resolved("hyp")))
    cfg = load_study(REPO / "studies" / "quick-af.yaml", {"name": "af2", "data": "data.yaml", "base": {},
                                                          "noise_seeds": 0})
    assert (cfg.resolved("model"), cfg.resolved("space")) == (af_model, af_space)
    space = load_space(cfg.resolved("space"))
    assert {"box", "cls", "dfl"} <= {g.name for g in evolved(space)}
    preflight(cfg, space, load_hyp(cfg.resolved("hyp")))
    cfg = study_for("ab", space=af_space)
    with pytest.raises(SpaceError, match="'dfl' is the anchor-free head's DFL gain"):
        preflight(cfg, load_space(cfg.resolved("space")), load_hyp(cfg.resolved("hyp")))


# ---- what would fail every trial fails once, before the study -----------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpus_without_cuda_exit_before_any_trial(study_for, capsys):
    study_for("g")
    code = evolve_main(["--study", str(QUICK), "--name", "gpu", "--data", "data.yaml", "--gpus", "0"])
    assert code == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not Path("runs/evolve/gpu/journal.log").exists()  # no study, no trial


def test_a_gpu_id_indexes_into_an_existing_mask(monkeypatch):
    from evolve.preflight import visible_gpu_ids
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert visible_gpu_ids("0,1") == ["4", "6"]
    with pytest.raises(StudyError, match="outside CUDA_VISIBLE_DEVICES"):
        visible_gpu_ids("2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpu_ids("0,1") == ["0", "1"]


def test_unloadable_data_stops_the_worker_without_recording_trials(study_for):
    cfg = study_for("nodata", trials=3, epochs=1)  # images/ is empty: no image to load
    run_dir = Path("runs/evolve/nodata")
    prepare_study(cfg, None, run_dir)
    with pytest.raises(WorkerSetupError, match="cannot load the study's data"):
        run_worker(cfg, run_dir, log=lambda m: None)  # the real fit: warm-up reads the data
    assert all(t.state == optuna.trial.TrialState.WAITING for t in _trials(cfg, run_dir))


# ---- GA, samplers, pruners ---------------------------------------------------------------------------------------

def test_genes_whose_range_starts_at_zero_move_both_ways():
    space = load_space(REPO / "studies" / "space.yaml")
    genes = [space[n] for n in ("mixup", "copy_paste", "lr0")]
    rng = np.random.default_rng(0)
    from_zero = [mutate(np.array([0.0, 0.0, 0.01]), genes, rng)[:2] for _ in range(200)]
    assert any(c[0] > 0 for c in from_zero) and any(c[1] > 0 for c in from_zero)
    from_above = [mutate(np.array([0.05, 0.05, 0.01]), genes, rng)[:2] for _ in range(200)]
    assert any(c[0] == 0.0 for c in from_above) and any(c[1] == 0.0 for c in from_above)  # switched off again


def test_sampler_seeds_differ_across_machines_and_repeat_on_one():
    assert worker_seed(0, 0, "host-a") != worker_seed(0, 0, "host-b")
    assert worker_seed(0, 0, "host-a") == worker_seed(0, 0, "host-a")
    assert worker_seed(0, 0, "host-a") != worker_seed(0, 1, "host-a")
    space, hyp = load_space(None), load_hyp(None)
    a = make_sampler("random", space, hyp, seed=0, worker=0, host="host-a")
    b = make_sampler("random", space, hyp, seed=0, worker=0, host="host-b")
    assert a._rng.rng.random() != b._rng.rng.random()


def test_pruners_wait_for_their_warmup():
    assert make_pruner("median", 10)._n_warmup_steps == 5
    assert make_pruner("median", 10, warmup=2)._n_warmup_steps == 2
    assert make_pruner("hyperband", 9)._min_resource == 4


def test_summary_json_holds_the_figures(tmp_path):
    from evolve.summary import build_summary
    run_dir = tmp_path / "study"
    (run_dir / "evolve").mkdir(parents=True)
    (run_dir / "retrain").mkdir()
    pd.DataFrame({"number": [0, 1, 2, 3], "state": ["COMPLETE"] * 4, "base": [True, True, True, False],
                  "noise": [True, True, True, False], "seed": [0, 101, 102, 0], "fitness": [0.20, 0.22, 0.21, 0.30],
                  "mAP50-95": [0.18, 0.2, 0.19, 0.28], "gain_sd": [-1, 1, 0, 9]}).to_csv(run_dir / "evolve" / "evolve.csv")
    csv = _retrain_csv(run_dir / "retrain" / "retrain.csv", [(3, "best", 1, 0.3, 0.3), (0, "base", 1, 0.2, 0.2)])
    (run_dir / "retrain" / "choice.json").write_text(json.dumps(choose_candidate(csv)))
    s = build_summary(run_dir)
    assert s["noise"]["mean"] == pytest.approx(0.21) and s["noise"]["sd"] == pytest.approx(0.01)
    assert s["noise"]["n"] == 3 and s["evolution"]["best_trial"]["number"] == 3
    assert s["retrain"]["chosen"] == 3 and s["prune"] is None
    (run_dir / "prune" / "prune_results.csv").parent.mkdir(parents=True)
    pd.DataFrame({"stage": ["baseline", "finetune"], "mAP50-95": [0.2, 0.19], "GFLOPs": [1.0, 0.6],
                  "latency_ms": [10.0, 7.0], "onnx_latency_ms": [5.0, 3.5]}).to_csv(run_dir / "prune" / "prune_results.csv", index=False)
    after = build_summary(run_dir)["prune"]["after"]
    assert after["stage"] == "finetune" and after["latency_ms"] == 7.0 and after["onnx_latency_ms"] == 3.5


def test_a_journal_cut_mid_append_opens_and_resumes(tmp_path):
    """A worker SIGKILLed inside its journal append leaves half a line: the study still opens and resumes."""
    from evolve.storage import make_storage
    study = optuna.create_study(study_name="j", storage=make_storage(None, tmp_path))
    study.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=3)
    journal = tmp_path / "journal.log"
    with open(journal, "ab") as f:
        f.write(b'{"op_code":4,"worker_id":"w","trial_id":3,"sta')  # the killed append
    study = optuna.load_study(study_name="j", storage=make_storage(None, tmp_path))
    assert journal.read_bytes().endswith(b"\n")  # the half line is gone
    study.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="j", storage=make_storage(None, tmp_path))
    assert [t.state.name for t in again.trials] == ["COMPLETE"] * 5



def test_a_lock_left_by_a_worker_killed_mid_append_is_released(tmp_path, monkeypatch):
    """A worker SIGKILLed while it holds the journal lock leaves Optuna's lock symlink behind. Optuna breaks a
    lock older than its grace period, but only if it can stat the link's target: with the relative run
    folders `make evolve` uses (runs/evolve/NAME) the target resolved against the link's own folder, never
    existed, and every later worker waited forever (seen in a test run under load)."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    import optuna.storages.journal._file as journal_file

    monkeypatch.chdir(tmp_path)
    killed = subprocess.run([sys.executable, "-c",
                             "import os, signal; from evolve.storage import make_storage; "
                             "s = make_storage(None, 'runs/evolve/k'); s._backend._lock.acquire(); "
                             "os.kill(os.getpid(), signal.SIGKILL)"], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert killed.returncode == -signal.SIGKILL and (tmp_path / "runs/evolve/k/journal.log.lock").is_symlink()
    monkeypatch.setattr(journal_file.JournalFileSymlinkLock.__init__, "__defaults__", (3,))  # grace 3 s, not 30
    opened = {}

    def open_study():
        opened["study"] = optuna.create_study(study_name="k", storage=make_storage(None, "runs/evolve/k"))

    thread = threading.Thread(target=open_study, daemon=True)
    thread.start()
    thread.join(60)
    assert "study" in opened, "still waiting for the lock of a worker that is dead"


def test_non_numeric_fitness_weights_name_the_key():
    with pytest.raises(StudyError, match="'fitness_weights' must be 4 numbers"):
        load_study(QUICK, {"fitness_weights": ["a", 0, 0.1, 0.9]})
