"""Study report and phase logic from fixture files: a fake Optuna journal, fake retrain and prune outputs; no training."""
import base64
import json
import re
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from core.hyp import default_hyp
from evolve import study as st
from evolve.html_report import SECTIONS, build_report
from evolve.storage import make_storage
from evolve.study_config import load_study
from tests.helpers import REPO

DIST = {"lr0": FloatDistribution(1e-5, 0.1, log=True), "momentum": FloatDistribution(0.6, 0.98),
        "mixup": FloatDistribution(0.0, 1.0)}
# (state, lr0, momentum, mixup, fitness): trial 0 = the default hyp; trial 2 is the best (0.30)
TRIALS = [("COMPLETE", 0.01, 0.937, 0.0, 0.10), ("COMPLETE", 0.02, 0.90, 0.1, 0.20),
          ("COMPLETE", 0.005, 0.95, 0.3, 0.30), ("PRUNED", 0.05, 0.7, 0.5, 0.05),
          ("FAIL", 0.09, 0.6, 0.9, None), ("COMPLETE", 0.012, 0.93, 0.2, 0.25)]
HIST_EDGES = [0.0] + [10 ** (e / 20) for e in range(-100, 31)]  # |gamma| bins as prune.sparsity logs them
STAGES = ["baseline", "sparse", "channel", "layer", "finetune"]


def make_journal(evolve_dir: Path, name: str = "fake") -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=make_storage(None, evolve_dir), direction="maximize")
    study.set_user_attr("config", {"name": name, "sampler": "ga", "seed": 0})
    study.set_user_attr("base_hyp", default_hyp())
    study.set_user_attr("space_evolved", list(DIST))
    for state, lr0, mom, mixup, fit in TRIALS:
        ua = {"epochs": 3, "seconds": 10.0, "device": "cpu", "worker": 0}
        if fit is not None:
            ua.update({"P": fit + 0.1, "R": fit + 0.2, "mAP50": fit * 1.5, "mAP50-95": fit})
        if state == "FAIL":
            ua["fail_reason"] = "FloatingPointError: loss is nan"
        study.add_trial(create_trial(
            state=TrialState[state], value=fit if state == "COMPLETE" else None,
            params={"lr0": lr0, "momentum": mom, "mixup": mixup}, distributions=DIST, user_attrs=ua,
            intermediate_values={1: fit} if state == "PRUNED" else {}))


def write_prune(prune_dir: Path) -> None:
    """prune_results.csv (latency 10 ms -> 4 ms: a 2.50x speedup), channels.csv and gamma.jsonl."""
    prune_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, s in enumerate(STAGES):
        rows.append({"stage": s, "P": 0.5, "R": 0.5, "mAP50": 0.4, "mAP50-95": 0.3 - 0.01 * i, "fitness": 0.3,
                     "params": 100000 - 10000 * i, "GFLOPs": 1.0 - 0.1 * i, "imgsz": 128, "latency_ms": 10.0 - 1.5 * i,
                     "latency_imgsz": 128, "threads": 1, "ckpt_MB": 1.0, "channels_kept": 500 - 50 * i,
                     "channels_pruned": 50 * i, "prune_ratio": 0.1 * i})
    pd.DataFrame(rows).to_csv(prune_dir / "prune_results.csv", index=False)
    pd.DataFrame({"conv": [f"model.{i}" for i in range(6)], "before": [16, 32, 32, 64, 64, 32],
                  "after_channel": [10, 20, 32, 40, 30, 20], "after_layer": [10, 20, 0, 40, 30, 20]}
                 ).to_csv(prune_dir / "channels.csv", index=False)
    with open(prune_dir / "gamma.jsonl", "w") as f:
        for epoch in (-1, 0, 1):
            counts = [0] * (len(HIST_EDGES) - 1)
            counts[80 - 10 * (epoch + 1)] = 100  # the mass moves to smaller |gamma| each epoch
            f.write(json.dumps({"epoch": epoch, "edges": HIST_EDGES, "counts": counts, "n": 100,
                                "share_small": 0.1 * (epoch + 1), "median": 0.5 / (epoch + 2)}) + "\n")


def write_retrain(retrain_dir: Path) -> None:
    rows = []
    for seed, m in ((1, 0.32), (2, 0.36)):
        name = f"trial2_seed{seed}"
        (retrain_dir / name).mkdir(parents=True)
        pd.DataFrame({"epoch": [0, 1, 2], "mAP50-95": [0.1, 0.2, m], "fitness": [0.1, 0.2, m]}).to_csv(
            retrain_dir / name / "results.csv", index=False)
        rows.append({"trial": 2, "role": "best", "seed": seed, "epochs": 3, "trial_fitness": 0.3, "P": 0.5, "R": 0.5,
                     "mAP50": 0.5, "mAP50-95": m, "fitness": m, "best_epoch": 2, "seconds": 5.0, "run": name})
    pd.DataFrame(rows).to_csv(retrain_dir / "retrain.csv", index=False)


def write_checkpoints(run_dir: Path) -> None:
    """Small real checkpoints where the study keeps them: the best retrain run (trial2_seed2, the highest
    fitness) and the last prune stage (finetune), so the report can draw their detections."""
    from core.checkpoint import save_checkpoint
    from core.model.yolo import Model

    torch.manual_seed(0)
    model = Model(str(REPO / "studies" / "models" / "yolov5-cpu.yaml"), nc=2).eval()
    model.names = ["circle", "square"]
    save_checkpoint(run_dir / "retrain" / "trial2_seed2" / "best.pt", model)
    save_checkpoint(run_dir / "prune" / "finetune.pt", model)


def study_dir(tmp_path: Path, evolve_only: bool = False) -> Path:
    run_dir, evolve_dir = tmp_path / "study" / "fake", tmp_path / "evolve" / "fake"
    make_journal(evolve_dir)
    run_dir.mkdir(parents=True)
    data = tmp_path / "tiny.yaml"  # generated on first use: 5 val images of 64 px
    data.write_text("path: shapes\ntrain: images/train\nval: images/val\nnames: {0: circle, 1: square}\n"
                    "synthetic: {seed: 0, n_train: 1, n_val: 5, imgsz: 64}\n")
    (run_dir / "study.json").write_text(json.dumps({"name": "fake", "evolve_dir": str(evolve_dir), "data": str(data),
                                                    "config": {"name": "fake", "seed": 0, "trials": 6}}))
    if not evolve_only:
        write_retrain(run_dir / "retrain")
        write_prune(run_dir / "prune")
        write_checkpoints(run_dir)
    return run_dir


def references(doc: str) -> list[str]:
    return re.findall(r'(?:src|href)\s*=\s*["\']?([^"\' >]*)', doc, flags=re.I)


def test_full_report_is_self_contained_with_every_section(tmp_path):
    run_dir = study_dir(tmp_path)
    path = st.report_only(run_dir, None)  # redraws evolve + prune plots from the journal and CSVs
    doc = path.read_text()
    for key, title in SECTIONS.items():
        assert f'<section id="{key}"><h2>{title}</h2>' in doc
    refs = references(doc)
    assert refs and all(re.match(r"data:image/(png|jpeg);base64,", r) or r.startswith("#") for r in refs), refs
    text = re.sub(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+", "", doc)  # base64 can spell "http" by chance
    assert "http" not in text.lower() and "url(" not in text and "<script" not in text
    images = [r for r in refs if r.startswith("data:image/png")]
    assert len(images) == 6  # fitness, scatter, retrain, stages, gamma, channels (importances: < 8 trials)
    assert all(base64.b64decode(r.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for r in images)
    # detections: the best and the pruned model on the first 4 val images, side by side, as core.detect drew them
    rec = json.loads((run_dir / "detect" / "detect.json").read_text())
    val = sorted((tmp_path / "shapes" / "images" / "val").iterdir())
    assert rec["images"] == [f.name for f in val[:4]] and len(val) == 5
    assert rec["models"]["best"]["weights"] == "retrain/trial2_seed2/best.pt"
    assert rec["models"]["pruned"]["weights"] == "prune/finetune.pt"
    jpegs = [base64.b64decode(r.split(",", 1)[1]) for r in refs if r.startswith("data:image/jpeg")]
    drawn = [(run_dir / "detect" / role / name).read_bytes() for name in rec["images"] for role in ("best", "pruned")]
    assert jpegs == drawn  # row by row: best, pruned
    for png in ("evolve/fitness.png", "evolve/evolve.png", "retrain/retrain.png", "prune/gamma.png"):
        assert (run_dir / png).is_file()
    # numbers: best trial 2 (0.3) vs default 0.1 (+200%), 4 complete / 1 pruned / 1 failed, retrain 0.34 ± 0.0283
    assert "best searched trial 2, fitness 0.3" in doc and "+0.2 (+200.0%)" in doc
    assert "4 complete, 1 pruned, 1 failed" in doc
    assert "0.34 ± 0.0283 (n=2)" in doc
    assert "2.50x" in doc and "GFLOPs 1.000 → 0.600 (40.0% less)" in doc
    assert "Only 4 complete trial(s)" in doc and "Missing: parameter importances" in doc
    assert doc.count("Missing:") == 1  # nothing else is missing
    top = doc.split('id="top"')[1].split("</table>")[0]
    assert [int(x) for x in re.findall(r"<tr><td>\d+</td><td>(\d+)</td>", top)] == [2, 5, 1, 0]


def test_partial_report_says_what_is_missing(tmp_path, capsys):
    run_dir = study_dir(tmp_path, evolve_only=True)
    assert st.main(["--report-only", str(run_dir)]) == 0
    assert f"report: {run_dir / 'report.html'}" in capsys.readouterr().out
    doc = (run_dir / "report.html").read_text()
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in doc
    assert "partial report" in doc
    assert "Missing: retrain at full budget" in doc and "Missing: pruning results" in doc
    assert "Missing: gamma histograms" in doc and "Missing: per-layer channels" in doc
    assert all(r.startswith(("data:", "#")) for r in references(doc))
    assert "best searched trial 2" in doc  # the evolution part is still reported


def test_report_without_any_results(tmp_path):
    doc = build_report(tmp_path).read_text()
    assert doc.count('class="missing"') == len(SECTIONS)  # every section says what it lacks, nothing raises


def test_phase_record_detects_changed_inputs_and_lost_outputs(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("x")
    inputs = {"epochs": 3, "hyp": {"lr0": 0.01}}
    assert not st.phase_current(tmp_path, "retrain", inputs)
    st.phase_done(tmp_path, "retrain", inputs, [out], 1.0)
    assert st.phase_current(tmp_path, "retrain", {"epochs": 3, "hyp": {"lr0": 0.01}})
    assert not st.phase_current(tmp_path, "retrain", {"epochs": 4, "hyp": {"lr0": 0.01}})
    assert not st.phase_current(tmp_path, "prune", inputs)
    out.unlink()
    assert not st.phase_current(tmp_path, "retrain", inputs)


class Fakes:
    """launch/fit/prune stand-ins that count calls and write the files the real ones would."""

    def __init__(self):
        self.fits, self.prunes, self.launches = [], [], 0

    def launch(self, cfg, storage, run_dir):
        self.launches += 1
        if not (Path(run_dir) / "journal.log").exists():
            make_journal(Path(run_dir), cfg.name)
        return 0

    def fit(self, data, model, hyp, opts):
        self.fits.append((opts.name, opts.epochs, hyp["lr0"]))
        d = Path(opts.project) / opts.name
        d.mkdir(parents=True)
        (d / "best.pt").write_bytes(f"{opts.epochs} {opts.seed} {hyp['lr0']}".encode())
        pd.DataFrame({"epoch": range(opts.epochs), "mAP50-95": [0.1] * opts.epochs}).to_csv(d / "results.csv")
        best = {"epoch": opts.epochs - 1, "P": 0.5, "R": 0.5, "mAP50": 0.5, "mAP50-95": 0.1 * opts.seed, "fitness": 0.1}
        return SimpleNamespace(best=best, history=[best] * opts.epochs, best_path=d / "best.pt", stop_reason="completed")

    def prune(self, popts):
        self.prunes.append((Path(popts.weights).name, popts.global_percent, Path(popts.weights).parent.name))
        write_prune(Path(popts.project) / popts.name)


def test_run_study_skips_unchanged_phases_and_reruns_changed(tmp_path):
    fakes = Fakes()

    def run(retrain=None, prune=None, force=False):
        cfg = load_study(None, {"name": "fake", "retrain": retrain or {"epochs": 2, "top_k": 2, "seeds": 1},
                                "prune": prune or {"global_percent": 0.3}})
        return st.run_study(cfg, tmp_path / "study" / "fake", tmp_path / "evolve" / "fake", force=force, threads=1,
                            launch_fn=fakes.launch, fit=fakes.fit, prune_fn=fakes.prune)

    assert run() == 0
    # top-2 by fitness: trial 2 (best, pruned), then trial 5; fresh seed = study seed + 1
    assert fakes.fits == [("trial2_seed1", 2, 0.005), ("trial5_seed1", 2, 0.012)]
    assert fakes.prunes == [("best.pt", 0.3, "trial2_seed1")]
    run_dir = tmp_path / "study" / "fake"
    assert (run_dir / "report.html").is_file() and (run_dir / "best_hyp.yaml").is_file()
    assert pd.read_csv(run_dir / "retrain" / "retrain.csv").trial.tolist() == [2, 5]

    assert run() == 0  # nothing changed: both phases skipped
    assert len(fakes.fits) == 2 and len(fakes.prunes) == 1 and fakes.launches == 2

    assert run(prune={"global_percent": 0.5}) == 0  # only the prune input changed
    assert len(fakes.fits) == 2 and fakes.prunes[-1][1] == 0.5

    assert run(retrain={"epochs": 3, "top_k": 1, "seeds": 2, "base": True}, prune={"global_percent": 0.5}) == 0
    assert fakes.fits[2:] == [("trial2_seed1", 3, 0.005), ("trial2_seed2", 3, 0.005),
                              ("trial0_seed1", 3, 0.01), ("trial0_seed2", 3, 0.01)]
    assert len(fakes.prunes) == 3  # the retrain ran, so the prune after it did too

    assert run(retrain={"epochs": 3, "top_k": 1, "seeds": 2, "base": True}, prune={"global_percent": 0.5},
               force=True) == 0
    assert len(fakes.fits) == 10 and len(fakes.prunes) == 4
    doc = (run_dir / "report.html").read_text()
    assert "0 (base)" in doc and "2 (best)" in doc


def test_bad_sections_name_the_field(tmp_path):
    with pytest.raises(st.StudyError, match="retrain option.*'epoch'"):
        st.retrain_options(load_study(None, {"retrain": {"epoch": 3}}))
    with pytest.raises(st.StudyError, match="retrain.seeds=0"):
        st.retrain_options(load_study(None, {"retrain": {"seeds": 0}}))
    with pytest.raises(st.StudyError, match=r"\['weights'\] not allowed"):
        st.check_prune_section(load_study(None, {"prune": {"weights": "x.pt"}}))


def test_failed_evolution_still_writes_a_partial_report(tmp_path):
    calls = []
    cfg = load_study(None, {"name": "fake"})
    code = st.run_study(cfg, tmp_path / "study", tmp_path / "evolve", threads=1,
                        launch_fn=lambda *a, **k: 1, fit=lambda *a: calls.append(a))
    assert code == 1 and not calls
    doc = (tmp_path / "study" / "report.html").read_text()
    assert "Missing: evolution results" in doc and "<h2>Settings and provenance</h2>" in doc
    assert "code version" in doc  # provenance is written before any phase runs
    assert st.main(["--report-only", str(tmp_path / "nowhere")]) == 2


def test_strings_from_user_files_are_escaped(tmp_path):
    """Names that come from user files (study, data, class names, stages, roles) render as text, never as markup."""
    evil = "<script>alert(1)</script>"
    run_dir = study_dir(tmp_path)
    (run_dir / "study.json").write_text(json.dumps({
        "name": evil, "study_file": f"studies/{evil}.yaml", "data": f"/data/{evil}.yaml", "command": evil,
        "config": {"name": evil, "sampler": evil, "train": {"names": [evil, "<b>cat</b>"]}, "prune": {"note": evil}}}))
    retrain = pd.read_csv(run_dir / "retrain" / "retrain.csv").assign(role=evil)
    retrain.to_csv(run_dir / "retrain" / "retrain.csv", index=False)
    prune = pd.read_csv(run_dir / "prune" / "prune_results.csv")
    prune.loc[2, "stage"] = evil
    prune.to_csv(run_dir / "prune" / "prune_results.csv", index=False)
    (run_dir / "prune" / "channel.json").write_text(json.dumps({"extra": {"threshold": 0.1, "tightest": evil}}))
    doc = build_report(run_dir).read_text()
    assert "<script" not in doc.lower() and "<b>cat</b>" not in doc
    escaped = doc.count("&lt;script&gt;alert(1)&lt;/script&gt;")
    assert escaped >= 6, escaped  # title, heading, settings rows, retrain role, stage, tightest conv


def test_a_lucky_seed_of_the_base_hyp_is_not_reported_as_the_search_result(tmp_path):
    """The base hyp's noise trial 1 scores highest; the summary, top trials, default-vs-best, the plots and
    summary.json name searched trial 3 as what the search found, and say that trial 1 is the base hyp."""
    from evolve.plots import plot_evolve, plot_fitness
    from evolve.summary import build_summary
    run_dir = tmp_path / "study"
    (run_dir / "evolve").mkdir(parents=True)
    df = pd.DataFrame({"number": [0, 1, 2, 3, 4], "state": ["COMPLETE"] * 5, "base": [True, True, True, False, False],
                       "noise": [True, True, True, False, False], "seed": [0, 101, 102, 0, 0],
                       "lr0": [0.01, 0.01, 0.01, 0.02, 0.005], "fitness": [0.20, 0.25, 0.21, 0.22, 0.10],
                       "gain_sd": [-1.0, 1.3, -0.3, 0.2, -4.8], "P": 0.5, "R": 0.5, "mAP50": 0.3,
                       "mAP50-95": [0.19, 0.24, 0.2, 0.21, 0.09], "epochs": 3, "seconds": 10.0, "device": "cpu",
                       "datetime_start": "2026-12-04 18:00:00", "datetime_complete": "2026-12-04 18:01:00"})
    df.to_csv(run_dir / "evolve" / "evolve.csv", index=False)
    (run_dir / "study.json").write_text(json.dumps({"name": "fake", "config": {"name": "fake"}}))
    evo = build_summary(run_dir)["evolution"]
    assert evo["best_trial"]["number"] == 1 and evo["best_trial"]["base"] is True
    assert evo["best_searched_trial"]["number"] == 3 and evo["best_searched_trial"]["gain_sd"] == pytest.approx(0.2)
    doc = build_report(run_dir).read_text()
    assert "best searched trial 3, fitness 0.22" in doc
    assert "The highest trial is the base hyp's own trial 1 (seed 101, 0.25)" in doc
    assert "best searched (trial 3)" in doc and "0.02" in doc.split('id="default-vs-best"')[1]
    top = doc.split('id="top"')[1].split("</table>")[0]
    assert "<td>1</td><td>1</td><td>base hyp, seed 101</td><td>0.25</td><td>+1.3</td>" in top
    assert "<td>3</td><td>searched</td>" in top
    # the plots star trial 3 (the fitness plot's legend names it)
    assert plot_fitness(df, tmp_path / "fitness.png") and plot_evolve(df, ["lr0"], tmp_path / "evolve.png")
    from unittest import mock

    import matplotlib.pyplot as plt
    with mock.patch.object(plt.Axes, "scatter", autospec=True, side_effect=plt.Axes.scatter) as scatter:
        plot_fitness(df, tmp_path / "fitness2.png")
    labels = [c.kwargs.get("label", "") for c in scatter.call_args_list]
    assert "best searched: trial 3 (0.22)" in labels


def test_best_searched_trial_is_shown_beside_the_expected_best_of_as_many_noise_draws(tmp_path):
    """The best of 9 searched trials at +1.3 sd: summary.json and the report put it beside the expected best of
    9 standard normals (+1.485 sd), so the figure reads as what selection alone gives, not as a gain."""
    from evolve.summary import SUMMARY_JSON, build_summary, write_json_atomic
    run_dir = tmp_path / "study"
    (run_dir / "evolve").mkdir(parents=True)
    n = 12  # trials 0-2 the base hyp's seeds, 3-11 searched (9)
    fitness = [0.20, 0.21, 0.19] + [0.18 + 0.003 * i for i in range(9)]
    df = pd.DataFrame({"number": range(n), "state": "COMPLETE", "base": [True] * 3 + [False] * 9,
                       "noise": [True] * 3 + [False] * 9, "seed": [0, 101, 102] + [0] * 9,
                       "lr0": [0.01] * 3 + [0.01 + 0.001 * i for i in range(9)], "fitness": fitness,
                       "gain_sd": [(f - 0.20) / 0.01 for f in fitness], "P": 0.5, "R": 0.5, "mAP50": 0.3,
                       "mAP50-95": fitness, "epochs": 3, "seconds": 10.0, "device": "cpu",
                       "datetime_start": "2026-12-04 18:00:00", "datetime_complete": "2026-12-04 18:01:00"})
    df.to_csv(run_dir / "evolve" / "evolve.csv", index=False)
    (run_dir / "study.json").write_text(json.dumps({"name": "fake", "config": {"name": "fake"}}))
    summary = build_summary(run_dir)
    best = summary["evolution"]["best_searched_trial"]
    assert best["number"] == 11 and best["gain_sd"] == pytest.approx(0.4)
    assert best["searched_trials"] == 9 and best["expected_best_noise_sd"] == pytest.approx(1.48501, abs=1e-4)
    write_json_atomic(run_dir / SUMMARY_JSON, summary)
    doc = build_report(run_dir).read_text()
    line = doc.split("Noise floor:")[1].split("</li>")[0]
    assert "+0.4 sd from it" in line and "best of 9 draws of seed noise alone is expected at +1.5 sd" in line
    assert "(not exceeded here)" in line
    assert "the best of 9 searched trials: see the selection caveat" in doc
