"""The study's base run, trained once per study and shared with every machine that joins it.

Several machines started together (a cluster job starts them all at once) used to train one base run
each; on separate machines a user had to copy runs/evolve/NAME/base/ by hand. Now:

- The first machine takes the study's lock (evolve.storage.study_lock: the database's advisory lock,
  or a file lock beside a shared journal) and holds it while it trains the base run; the others wait
  on the lock. A machine killed while training releases it (the server or the kernel drops the lock)
  and the next one trains instead.
- The trainer uploads best.pt to the study's artifact store (Optuna's artifact API: `artifacts:` in the
  study file, a folder every machine reaches, or `s3://bucket/prefix` with boto3) and records its sha256,
  artifact id and inputs in the study (user attr SHARED_BASE).
- A joining machine whose inputs match (what the base run depends on, less what differs by machine:
  image mtimes, loader workers) fetches the file, checks its sha256 and finetunes from it. Its own
  run.json then records the fetch, so later runs on it reuse the file like a local base run.

Without an artifact store (a database URL and no `artifacts:`) the base run is still trained once, and a
joining machine is told to copy it or to set `artifacts:`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from core.atomic import atomic_write
from core.digest import describe_change, sha256_file
from evolve.base_run import RECORD, base_inputs, base_record, ensure_base_run
from evolve.storage import is_url, study_lock
from evolve.study_config import StudyConfig, StudyError
from evolve.train_setup import base_weights_path

__all__ = ["SHARED_BASE", "artifact_store", "portable_inputs", "study_base_run"]

LOGGER = logging.getLogger(__name__)

SHARED_BASE = "shared_base_run"  # study user attr: {sha256, artifact_id, inputs, fitness, ..., host}


def artifact_store(cfg: StudyConfig, storage_url: str | None) -> Any | None:
    """Where the base run's checkpoint is shared: `artifacts:` (a folder, or s3://bucket/prefix), else a folder
    beside a journal given as a path (a shared journal implies a shared folder); None for the run dir's own
    journal (one machine) and for a database without `artifacts:`."""
    where = cfg.artifacts
    if where is None and storage_url and not is_url(storage_url):
        where = str(Path(storage_url).absolute().parent / "artifacts")
    if where is None:
        return None
    if where.startswith("s3://"):
        try:
            from optuna.artifacts import Boto3ArtifactStore
            import boto3  # noqa: F401  (Boto3ArtifactStore needs it at construction)
        except ImportError:
            raise StudyError(f"artifacts: {where} needs boto3 (pip install boto3)") from None
        bucket, _, prefix = where[len("s3://"):].partition("/")
        store = Boto3ArtifactStore(bucket)
        return _Prefixed(store, prefix) if prefix else store
    Path(where).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(where)


class _Prefixed:
    """An artifact store whose ids live under `prefix/` (one bucket for many studies)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store, self.prefix = store, prefix.rstrip("/") + "/"

    def open_reader(self, artifact_id: str) -> Any:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def portable_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The base run's inputs less what differs from machine to machine for the same run: the images' mtimes (a
    copied or regenerated dataset has new ones; sizes, names and every label's content stay in) and the loader
    worker count (cores). Two machines whose portable inputs agree may share one base run."""
    out = {k: v for k, v in inputs.items() if k != "workers"}
    data = out.get("data")
    if isinstance(data, Mapping):
        parts = {k: v for k, v in data.items() if k not in ("images", "digest")}
        out["data"] = {"digest": hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest(), **parts}
    return out


def study_base_run(cfg: StudyConfig, base_hyp: Mapping[str, float], study: optuna.Study, storage_url: str | None,
                   run_dir: Path | str, device: str, fit: Callable[..., Any] | None = None,
                   log: Callable[[str], None] = LOGGER.info) -> Path | None:
    """The base run's best.pt on this machine: the study's shared one (fetched if need be), else trained here
    once for the whole study and published. None when the study has no base run."""
    if not cfg.base or cfg.weights:
        return None
    run_dir = Path(run_dir)
    store = artifact_store(cfg, storage_url)
    shared = study.user_attrs.get(SHARED_BASE)
    if shared is None:
        with study_lock(storage_url, run_dir, cfg.name):  # the first machine trains; the others wait here
            shared = study.user_attrs.get(SHARED_BASE)
            if shared is None:
                weights = ensure_base_run(cfg, base_hyp, run_dir, device, fit=fit, log=log)
                _publish(study, weights, store, log)
                return weights
            log(f"base run: trained meanwhile by {shared.get('host', '?')}")
    return _adopt(cfg, base_hyp, shared, store, run_dir, log)


def _publish(study: optuna.Study, weights: Path, store: Any | None, log: Callable[[str], None]) -> None:
    other = study.user_attrs.get(SHARED_BASE)
    if other is not None:  # only when the lock was lost while training (a database restart ends its session)
        raise StudyError(f"study '{study.study_name}': {other.get('host', '?')} published the study's base run "
                         f"(sha256 {other['sha256'][:12]}) while this machine trained its own (the study's lock was "
                         f"lost meanwhile): move {weights.parent}/ away and run again to fetch the study's")
    record = base_record(weights.parent.parent) or {}
    artifact_id = upload_artifact(artifact_store=store, file_path=str(weights), study_or_trial=study) if store else None
    study.set_user_attr(SHARED_BASE, {
        "sha256": sha256_file(weights), "artifact_id": artifact_id, "inputs": portable_inputs(record.get("inputs", {})),
        "host": socket.gethostname(), "published": time.strftime("%Y-%m-%d %H:%M:%S"),
        **{k: record.get(k) for k in ("fitness", "mAP50-95", "best_epoch", "seconds")}})
    if store:
        log(f"base run: shared through the study's artifact store (artifact {artifact_id[:8]}): other machines fetch it")


def _adopt(cfg: StudyConfig, base_hyp: Mapping[str, float], shared: Mapping[str, Any], store: Any | None,
           run_dir: Path, log: Callable[[str], None]) -> Path:
    """This machine's copy of the study's base run, checked by sha256; fetched from the artifact store if missing."""
    weights = base_weights_path(run_dir)
    sha = shared["sha256"]
    inputs = base_inputs(cfg, base_hyp)
    ours, theirs = portable_inputs(inputs), dict(shared.get("inputs") or {})
    code = describe_change(theirs.pop("code_version", None), ours.pop("code_version", None))
    if code:  # the checkpoint is what the trials finetune; newer code must not strand a study mid-way
        LOGGER.warning(f"base run: trained by code {shared['inputs'].get('code_version')}, this machine runs "
                       f"{inputs.get('code_version')}: reused, as the study's trials already finetune it")
    change = describe_change(theirs, ours)
    if change:  # as for a local base run: trials already finetuned it, a new one would mix two start points
        raise StudyError(f"study '{cfg.name}': its base run (sha256 {sha[:12]}, trained on {shared.get('host', '?')}) "
                         f"was trained with other inputs than this machine's ({change}): run with the inputs it was "
                         f"trained with, or use --name for a new study")
    if weights.is_file():
        if sha256_file(weights) != sha:
            raise StudyError(f"study '{cfg.name}' finetunes the base run trained on {shared.get('host', '?')} "
                             f"(sha256 {sha[:12]}), but {weights} here is another file: move {weights.parent}/ away "
                             f"to fetch the study's, or use --name for a new study")
        if base_record(run_dir) is None:  # copied by hand: record it as this machine's
            atomic_write(weights.parent / RECORD, json.dumps(_record(inputs, shared, "copied"), indent=1))
        return weights  # the trainer itself, or a machine that fetched (or was given) it before
    if store is None or not shared.get("artifact_id"):
        raise StudyError(f"study '{cfg.name}' finetunes a base run trained on {shared.get('host', '?')} (sha256 "
                         f"{sha[:12]}) that this machine does not have: copy its runs/evolve/{cfg.name}/base/ here, "
                         f"or give every machine `artifacts:` (a folder all of them reach, or s3://bucket/prefix) "
                         f"so the base run is shared through the study's artifact store")
    weights.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=weights.parent) as tmp:
        got = Path(tmp) / weights.name
        download_artifact(artifact_store=store, file_path=str(got), artifact_id=shared["artifact_id"])
        if sha256_file(got) != sha:
            raise StudyError(f"study '{cfg.name}': the base run fetched from the artifact store (artifact "
                             f"{shared['artifact_id']}) has sha256 {sha256_file(got)[:12]}, not the recorded "
                             f"{sha[:12]}: the store holds another or a damaged file")
        got.replace(weights)
    record = _record(inputs, shared, "fetched")
    atomic_write(weights.parent / RECORD, json.dumps(record, indent=1))  # last: a fetch cut short is redone
    log(f"base run: fetched from the study's artifact store (trained on {shared.get('host', '?')}, fitness "
        f"{float(shared.get('fitness') or float('nan')):.4f}), sha256 {sha[:12]} checked -> {weights}")
    return weights


def _record(inputs: Mapping[str, Any], shared: Mapping[str, Any], how: str) -> dict[str, Any]:
    """run.json for a base run trained elsewhere: this machine's inputs (they agree where it matters) and how the
    file came."""
    return {"inputs": dict(inputs), **{k: shared.get(k) for k in ("fitness", "mAP50-95", "best_epoch", "seconds")},
            how: {"host": shared.get("host"), "artifact_id": shared.get("artifact_id"), "sha256": shared["sha256"],
                  "at": time.strftime("%Y-%m-%d %H:%M:%S")}}
