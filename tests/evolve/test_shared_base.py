"""One base run per study, shared through the study's artifact store (evolve/shared_base.py).

Two "machines" are two launchers with their own working folder (their own run dir and their own copy of the
data, generated there: same labels, other mtimes) that share only the study's storage and artifact folder:
a journal on a shared path, or the real PostgreSQL server (tests/pg_server.py) with `artifacts:`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from bench.crash_resume import write_tiny_study
from bench.resume_stress import write_tiny_data
from core.data.config import load_data_config
from core.digest import sha256_file
from evolve.launcher import prepare_study
from evolve.shared_base import SHARED_BASE, study_base_run
from evolve.storage import make_storage
from evolve.study_config import StudyError, load_study
from tests.helpers import REPO, fake_fit

BASE_LOG_ENV = "SHARED_BASE_TEST_LOG"


def counting_fit(data, model, hyp, opts, callbacks=None):
    """tests.helpers.fake_fit, but a base run (the run named 'base') is logged, takes a second (so machines started
    together overlap) and saves a checkpoint unique to its process: two base runs cannot have one sha256."""
    result = fake_fit(data, model, hyp, opts, callbacks)
    if opts.name == "base":
        with open(os.environ[BASE_LOG_ENV], "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        Path(result.best_path).write_text(f"base run of process {os.getpid()} at {time.time()}")
    return result


def _machine_study(machine: Path, trials: int, **extra) -> str:
    """The tiny study on this machine's own copy of the data."""
    study_file = write_tiny_study(machine, write_tiny_data(machine / "data"), workers=1, trials=trials)
    study = yaml.safe_load(Path(study_file).read_text())
    study.update({"name": "shared", "noise_seeds": 0, **extra})  # `extra` may name it
    Path(study_file).write_text(yaml.safe_dump(study, sort_keys=False))
    return study_file


def _start(machine: Path, study_file: str, storage: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_FIT_SLEEP": "0.05", BASE_LOG_ENV: str(log)}
    cmd = [sys.executable, "-m", "evolve", "--study", study_file, "--storage", storage,
           "--fit", "tests.evolve.test_shared_base:counting_fit"]
    return subprocess.Popen(cmd, cwd=machine, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(params=["journal", "postgres"])
def shared_storage(request, tmp_path):
    """(storage given to both machines, extra study fields): a journal on a shared folder (the artifact folder
    defaults beside it), or PostgreSQL with an explicit `artifacts:` folder."""
    if request.param == "journal":
        return str(tmp_path / "shared" / "journal.log"), {"name": "shared-journal"}
    return request.getfixturevalue("postgres_url"), {"name": "shared-pg",
                                                     "artifacts": str(tmp_path / "shared" / "artifacts")}


def test_two_machines_started_together_train_one_base_run_and_both_finetune_it(shared_storage, tmp_path):
    storage, extra = shared_storage
    name = extra["name"]
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    log = tmp_path / "base_runs.log"
    files = [_machine_study(m, trials=6, **extra) for m in machines]
    procs = [_start(m, f, storage, log) for m, f in zip(machines, files)]  # started together, as a cluster job does
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outs)
    assert len(log.read_text().split()) == 1, "\n\n".join(outs)  # one base run for the study, not one per machine
    weights = [m / "runs" / "evolve" / name / "base" / "best.pt" for m in machines]
    assert sha256_file(weights[0]) == sha256_file(weights[1])  # the one base run, on both machines
    records = [json.loads((w.parent / "run.json").read_text()) for w in weights]
    fetched = [i for i, r in enumerate(records) if "fetched" in r]
    assert len(fetched) == 1 and "fetched from the study's artifact store" in outs[fetched[0]]
    study = optuna.load_study(study_name=name, storage=make_storage(storage, tmp_path))
    assert study.user_attrs[SHARED_BASE]["sha256"] == sha256_file(weights[0])
    assert study.user_attrs["start_weights_sha256"] == sha256_file(weights[0])  # both machines' trials start there
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A study whose base run machine A trained and published (journal on a shared path); B's config and dirs."""
    monkeypatch.setenv(BASE_LOG_ENV, str(tmp_path / "base_runs.log"))
    storage = str(tmp_path / "shared" / "journal.log")

    def machine(name: str) -> tuple:
        root = tmp_path / name
        cfg = load_study(_machine_study(root, trials=4), {})
        return cfg, root / "runs" / "evolve" / "shared"

    cfg_a, dir_a = machine("machine-a")
    hyp = yaml.safe_load(Path(cfg_a.resolved("hyp")).read_text())
    study = prepare_study(cfg_a, storage, dir_a)
    study_base_run(cfg_a, hyp, study, storage, dir_a, "cpu", fit=counting_fit)
    return storage, study, hyp, machine


def test_a_damaged_artifact_is_refused_by_its_sha256(published):
    storage, study, hyp, machine = published
    artifact = Path(storage).parent / "artifacts" / study.user_attrs[SHARED_BASE]["artifact_id"]
    artifact.write_text("not the base run")
    cfg_b, dir_b = machine("machine-b")
    with pytest.raises(StudyError, match="fetched from the artifact store .* not the recorded"):
        study_base_run(cfg_b, hyp, study, storage, dir_b, "cpu", fit=counting_fit)
    assert not (dir_b / "base" / "best.pt").exists()  # nothing half-fetched is left to be taken as the base run


def test_a_machine_with_other_labels_is_refused_with_the_reason(published):
    storage, study, hyp, machine = published
    cfg_b, dir_b = machine("machine-b")
    load_data_config(cfg_b.resolved("data"))  # generates machine B's copy of the data
    label = next((Path(cfg_b.resolved("data")).parent / "shapes" / "labels" / "train").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(StudyError, match=r"trained with other inputs .*data changed \(labels\)"):
        study_base_run(cfg_b, hyp, study, storage, dir_b, "cpu", fit=counting_fit)


def test_without_an_artifact_store_a_joining_machine_is_told_what_to_do(published, tmp_path):
    storage, study, hyp, machine = published
    shared = dict(study.user_attrs[SHARED_BASE], artifact_id=None)  # as a database study without `artifacts:`
    study.set_user_attr(SHARED_BASE, shared)
    cfg_b, dir_b = machine("machine-b")
    with pytest.raises(StudyError, match="copy its runs/evolve/shared/base/ here, or give every machine `artifacts:`"):
        study_base_run(cfg_b, hyp, study, storage, dir_b, "cpu", fit=counting_fit)


def test_a_base_run_published_while_this_machine_trained_is_not_overwritten(published, tmp_path):
    """The first publisher wins: a machine that trained while the lock was lost (a database restart) stops with
    what to do instead of replacing the file other machines' trials already finetune."""
    storage, study, hyp, machine = published
    first = study.user_attrs[SHARED_BASE]
    cfg_b, dir_b = machine("machine-b")
    from evolve.shared_base import _publish
    weights = dir_b / "base" / "best.pt"
    weights.parent.mkdir(parents=True)
    weights.write_text("machine B's own base run")
    with pytest.raises(StudyError, match="published the study's base run .* while this machine trained its own"):
        _publish(study, weights, None, print)
    assert study.user_attrs[SHARED_BASE] == first


def test_a_study_resumes_on_its_base_run_after_the_code_changed(published, monkeypatch, caplog):
    """A commit (or a pull) between two runs of a study must not strand it: the base run is what its trials
    finetune, so it is reused with a warning, on the machine that trained it and on one that fetches it."""
    storage, study, hyp, machine = published
    log = Path(os.environ[BASE_LOG_ENV])
    monkeypatch.setenv("YEP_CODE_VERSION", "9.9.9+gnewer")
    cfg_a, dir_a = machine("machine-a")
    assert study_base_run(cfg_a, hyp, study, storage, dir_a, "cpu", fit=counting_fit) == dir_a / "base" / "best.pt"
    cfg_b, dir_b = machine("machine-b")
    got = study_base_run(cfg_b, hyp, study, storage, dir_b, "cpu", fit=counting_fit)
    assert sha256_file(got) == study.user_attrs[SHARED_BASE]["sha256"]
    assert len(log.read_text().split()) == 1  # trained once, before the code changed
    assert "this machine runs 9.9.9+gnewer: reused" in caplog.text
