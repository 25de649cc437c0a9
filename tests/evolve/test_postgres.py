"""Evolution on a real PostgreSQL server (tests/pg_server.py, started by the `postgres_url` fixture):
two "machines" sharing one study, a SIGKILLed worker, resume, the base hyp enqueued once, a trial failed
as stale while its worker lived, PID namespaces, and the password kept out of every output and file.

A "machine" is a worker process in its own UTS + PID + mount namespace (`unshare`, as root: CI's
case) with its own host name and its own run dir, so nothing but the database is shared; without
unshare the process still gets its own run dir (the file lock is per machine).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from evolve.launcher import prepare_study
from evolve.ledger import (
    OWNER,
    RECOVERED_FROM,
    WITHDRAWN,
    count_finished,
    fail_and_retry,
    process_space,
    retry_history,
    stale_reason,
)
from evolve.objective import objective_value
from evolve.storage import make_storage
from evolve.worker import run_worker
from tests.helpers import FAKE_FIT, REPO, fake_fit

CAN_UNSHARE = os.geteuid() == 0 and shutil.which("unshare") is not None and subprocess.run(
    ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def cfg_for(cfg_for):
    """conftest's cfg_for with a 1 s heartbeat, so a dead worker's trial is stale after 3 s."""
    return lambda name, **kw: cfg_for(name, **{"heartbeat": 1, **kw})


def _machine(host: str, run_dir: Path, url: str, log: Path, sleep: float) -> subprocess.Popen:
    """One evolution worker as if on another machine; the URL travels in the environment, as the launcher does."""
    cmd = [sys.executable, "-m", "evolve.worker", "--run-dir", str(run_dir), "--fit", FAKE_FIT]
    if CAN_UNSHARE:  # --kill-child: a SIGKILL of unshare kills the worker too, like a machine going down
        cmd = ["unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c",
               f'hostname {host} && exec "$@"', "sh", *cmd]
    env = {**os.environ, "EVOLVE_STORAGE": url, "FAKE_FIT_SLEEP": str(sleep)}
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)


def _files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode(errors="replace") for p in root.rglob("*") if p.is_file())


def test_two_machines_share_one_study_survive_a_sigkill_and_resume(cfg_for, postgres_url, pg_server, tmp_path):
    n = 8
    cfg = cfg_for("pg-two-machines", trials=n, epochs=3)
    dirs = {h: tmp_path / h / "runs" / "evolve" / cfg.name for h in ("machine-a", "machine-b")}
    for run_dir in dirs.values():  # what each machine's launcher does first
        prepare_study(cfg, postgres_url, run_dir)
    study = optuna.load_study(study_name=cfg.name, storage=make_storage(postgres_url, "."))
    assert len(study.get_trials()) == 1  # the base hyp, enqueued once although both machines prepared

    logs = {h: tmp_path / f"{h}.log" for h in dirs}
    procs = {h: _machine(h, dirs[h], postgres_url, logs[h], sleep=0.4) for h in dirs}
    a_host = "machine-a" if CAN_UNSHARE else None
    deadline = time.time() + 120
    victim = None
    while time.time() < deadline and victim is None:  # kill machine A once it has finished one trial and runs another
        trials = study.get_trials(deepcopy=False)
        mine = [t for t in trials if (t.system_attrs.get(OWNER) or {}).get("host") == a_host or
                (a_host is None and (t.system_attrs.get(OWNER) or {}).get("pid") == procs["machine-a"].pid)]
        if any(t.state == TrialState.COMPLETE for t in mine):
            running = [t for t in mine if t.state == TrialState.RUNNING and t.intermediate_values]
            victim = running[0] if running else None
        time.sleep(0.05)
    assert victim is not None, logs["machine-a"].read_text()
    procs["machine-a"].send_signal(signal.SIGKILL)
    procs["machine-a"].wait()
    finished_before = {t.number: t.value for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert procs["machine-b"].wait(timeout=180) == 0, logs["machine-b"].read_text()

    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert count_finished(trials) == n and len(complete) == n                   # exactly N, no overshoot
    assert len({tuple(sorted(t.params.items())) for t in complete}) == n        # no trial ran twice
    assert {t.number: t.value for t in trials if t.number in finished_before} == finished_before  # none lost
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL
    retry = [t for t in trials if victim.number in retry_history(t)]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == dead.params
    assert retry[0].user_attrs["retry_of"] == dead.number and "fail_reason" not in retry[0].user_attrs
    if CAN_UNSHARE:  # the survivor on the other "machine" ran the retry
        assert retry[0].system_attrs[OWNER]["host"] == "machine-b"
        assert {t.system_attrs[OWNER]["host"] for t in complete} == {"machine-a", "machine-b"}

    # Resume after both stopped: a larger budget adds exactly the difference.
    ran = run_worker(cfg_for(cfg.name, trials=n + 2, epochs=3), dirs["machine-a"], postgres_url, fit=fake_fit,
                     poll=0.05, log=lambda m: None)
    assert ran == 2 and count_finished(study.get_trials()) == n + 2

    # The password is nowhere: not in the logs, the run dirs, the stored attrs.
    assert pg_server.password not in _files_text(tmp_path)
    assert pg_server.password not in repr([(t.user_attrs, t.system_attrs) for t in study.get_trials()])


def test_base_hyp_enqueued_once_when_machines_start_together(cfg_for, postgres_url, tmp_path):
    cfg = cfg_for("pg-start-together", trials=4, noise_seeds=3)
    code = ("import sys; from evolve.launcher import prepare_study; from evolve.study_config import load_study; "
            "prepare_study(load_study(sys.argv[1]), sys.argv[2], sys.argv[3])")
    study_yaml = tmp_path / "s.yaml"
    import yaml
    study_yaml.write_text(yaml.safe_dump(cfg.as_record()))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(study_yaml), postgres_url, str(tmp_path / f"m{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    trials = optuna.load_study(study_name=cfg.name, storage=make_storage(postgres_url, ".")).get_trials()
    assert len(trials) == 3 and all(t.user_attrs.get("base") for t in trials)  # 3 noise seeds, not 9


@pytest.mark.parametrize("where", ["journal", "postgres"])
def test_a_live_worker_failed_as_stale_keeps_its_result(cfg_for, where, request, tmp_path):
    url = request.getfixturevalue("postgres_url") if where == "postgres" else None
    cfg = cfg_for(f"stale-alive-{where}", trials=1, epochs=3)
    run_dir = tmp_path / "runs" / "evolve" / cfg.name
    prepare_study(cfg, url, run_dir)
    study = optuna.load_study(study_name=cfg.name, storage=make_storage(url, run_dir))

    def fit_failed_meanwhile(data, model, hyp, opts, callbacks=None):
        # another worker, seeing a late heartbeat, fails this trial while it trains
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        assert fail_and_retry(study, running[0], "stale: no heartbeat for 99 s", max_retries=2)
        return fake_fit(data, model, hyp, opts, callbacks)

    logs: list[str] = []
    ran = run_worker(cfg, run_dir, url, fit=fit_failed_meanwhile, poll=0.05, log=logs.append)
    trials = study.get_trials()
    assert ran == 1 and count_finished(trials) == 1, [(t.number, t.state) for t in trials]
    stale, retry, kept = trials
    assert stale.state == TrialState.FAIL and retry_history(retry) == [0]
    assert retry.state == TrialState.FAIL and retry.system_attrs[WITHDRAWN]      # withdrawn, never ran
    assert kept.state == TrialState.COMPLETE and kept.user_attrs[RECOVERED_FROM] == 0
    assert kept.params == stale.params and kept.intermediate_values.keys() == {1, 2, 3}
    expected = fake_fit(None, None, _hyp(cfg, stale.params), _opts(cfg)).history
    assert kept.value == pytest.approx(objective_value(expected, cfg.objective))
    assert "fail_reason" not in kept.user_attrs and kept.user_attrs["mAP50"] > 0
    assert any("result is kept as trial 2" in m for m in logs)


def _hyp(cfg, params):
    from core.hyp import load_hyp
    return load_hyp(cfg.resolved("hyp")) | params


def _opts(cfg):
    from evolve.train_setup import search_train_options
    return search_train_options(cfg, epochs=cfg.epochs, seed=cfg.seed, device="cpu", project=".", name="x",
                                save=False)


def test_a_dead_pid_in_another_pid_namespace_is_not_taken_for_a_dead_worker():
    here = process_space()
    t = optuna.trial.create_trial(state=TrialState.WAITING)  # a RUNNING frozen trial, owner in another namespace
    t.state = TrialState.RUNNING
    t.system_attrs = {OWNER: {**here, "pidns": "pid:[1]", "pid": 2 ** 22 + 7, "worker": 0},
                      "evolve_heartbeat": time.time()}
    assert stale_reason(t, grace=60) is None                                   # heartbeat fresh: alive
    t.system_attrs[OWNER]["pidns"] = here["pidns"]
    assert "died" in stale_reason(t, grace=60)                                 # same namespace: pid checked
    t.system_attrs[OWNER]["boot"] = "another-machine"
    assert stale_reason(t, grace=60) is None                                   # same pidns inode, other kernel
    t.system_attrs["evolve_heartbeat"] = time.time() - 120
    assert "no heartbeat" in stale_reason(t, grace=60)


@pytest.mark.skipif(not CAN_UNSHARE, reason="needs root and unshare (CI runs as root)")
def test_a_container_sees_another_pid_namespace_on_the_same_boot():
    code = "from evolve.ledger import process_space; print(repr(process_space()))"
    out = subprocess.run(["unshare", "--uts", "--pid", "--fork", "--mount-proc", "sh", "-c",
                          f"hostname {os.uname().nodename} && exec {sys.executable} -c '{code}'"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    inside = eval(out.stdout.strip())
    here = process_space()
    assert inside["host"] == here["host"] and inside["boot"] == here["boot"] and inside["pidns"] != here["pidns"]


def test_storage_errors_never_print_the_password(postgres_url):
    wrong = postgres_url.replace("@127.0.0.1", "x@127.0.0.1")  # a wrong password
    secret = wrong.split(":")[2].split("@")[0]
    with pytest.raises(RuntimeError) as e:
        make_storage(wrong, ".")
    assert secret not in str(e.value) and "***" in str(e.value)


def test_heartbeat_on_a_database_uses_optunas(cfg_for, postgres_url, tmp_path):
    from evolve.ledger import has_heartbeat
    cfg = cfg_for("pg-heartbeat", trials=1)
    prepare_study(cfg, postgres_url, tmp_path / "r")
    storage = make_storage(postgres_url, ".", heartbeat=2, max_retries=1)
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    assert has_heartbeat(study) and storage.get_heartbeat_interval() == 2 and storage.grace_period == 6
    assert not has_heartbeat(optuna.load_study(study_name=cfg.name, storage=make_storage(postgres_url, ".")))
    # a thread used only for a race-free check that the study lock is exclusive across connections
    from evolve.storage import study_lock
    order: list[str] = []

    def other():
        with study_lock(postgres_url, tmp_path, cfg.name):
            order.append("other")
    with study_lock(postgres_url, tmp_path, cfg.name):
        th = threading.Thread(target=other)
        th.start()
        time.sleep(0.5)
        order.append("first")
    th.join(10)
    assert order == ["first", "other"]


def test_machines_joining_a_study_finetune_the_same_base_run(cfg_for, postgres_url, tmp_path, monkeypatch):
    from evolve.launcher import launch
    from evolve.study_config import StudyError
    monkeypatch.setenv("EVOLVE_STORAGE", "")
    cfg = cfg_for("pg-base-run", trials=2, epochs=2, workers=1, base={"epochs": 2})
    a, b = (tmp_path / h / "runs" / "evolve" / cfg.name for h in ("machine-a", "machine-b"))
    assert launch(cfg, postgres_url, a, fit_spec=FAKE_FIT, poll=0.2) == 0       # machine A trains the base run
    with pytest.raises(StudyError, match="does not have"):                   # B would train a second one: refused
        launch(cfg, postgres_url, b, fit_spec=FAKE_FIT, poll=0.2)
    assert not (b / "base" / "best.pt").exists()
    shutil.copytree(a / "base", b / "base")                                   # the documented fix
    assert launch(cfg_for(cfg.name, trials=3, epochs=2, workers=1, base={"epochs": 2}), postgres_url, b,
                  fit_spec=FAKE_FIT, poll=0.2) == 0
    (b / "base" / "best.pt").write_text("another model")                     # same inputs, other weights
    with pytest.raises(StudyError, match="here is another file: move .* away to fetch the study's"):
        launch(cfg, postgres_url, b, fit_spec=FAKE_FIT, poll=0.2)


def test_a_database_restart_mid_study_loses_and_doubles_no_trial(cfg_for, postgres_url, pg_server, tmp_path):
    """pg_ctl restart while two workers run trials: the workers ride it out (or stop, and the study is run again
    until done), and the study ends with its N trials, every one COMPLETE (a storage error is not the hyp's
    failure), none counted twice, the trials finished before the restart unchanged."""
    n = 8
    cfg = cfg_for("pg-restart", trials=n, epochs=3)
    run_dir = tmp_path / "runs" / "evolve" / cfg.name
    prepare_study(cfg, postgres_url, run_dir)
    study = optuna.load_study(study_name=cfg.name, storage=make_storage(postgres_url, "."))
    procs = [_machine(f"w{i}", run_dir, postgres_url, tmp_path / f"w{i}.log", sleep=0.3) for i in range(2)]
    deadline = time.time() + 120
    while time.time() < deadline:  # restart once two trials are done and others are mid-training
        trials = study.get_trials(deepcopy=False)
        if count_finished(trials) >= 2 and any(t.state == TrialState.RUNNING and t.intermediate_values
                                               for t in trials):
            break
        time.sleep(0.05)
    before = {t.number: t.value for t in study.get_trials() if t.state == TrialState.COMPLETE}
    pg_server.restart()
    for p in procs:
        p.wait(timeout=120)
    for _ in range(3):  # what a user does after workers stopped: run the study again
        if count_finished(study.get_trials()) >= n:
            break
        run_worker(cfg, run_dir, postgres_url, fit=fake_fit, poll=0.05, log=lambda m: None)
    trials = study.get_trials()
    counted = [t for t in trials if t.state.is_finished() and count_finished([t]) == 1
               and t.number not in {r for u in trials for r in retry_history(u)}]
    assert count_finished(trials) == n, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in counted), \
        [(t.number, t.user_attrs.get("fail_reason")) for t in counted if t.state != TrialState.COMPLETE]
    assert {t.number: t.value for t in trials if t.number in before} == before
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
