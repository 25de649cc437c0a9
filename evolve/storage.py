"""Where a study lives: a journal file in the run dir (default) or any Optuna RDB URL; URLs printed masked.

`study_lock` serialises what must happen once per study across all its workers ("count finished
trials, then ask for a new one"; "enqueue the base hyp"): a file lock in the run dir for the journal
(one machine), the database's own advisory lock for PostgreSQL and MySQL (every machine).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._file import get_lock_file  # the lock Optuna's own appends take

from evolve.ledger import RetryStale

__all__ = ["JournalFile", "make_storage", "run_dir_for", "open_target", "mask_url"]

JOURNAL_NAME = "journal.log"
RUNS = Path("runs") / "evolve"
_SECRET_KEYS = re.compile(r"pass|pwd|secret|token|key", re.I)


def run_dir_for(name: str) -> Path:
    return RUNS / name


def is_url(target: str | None) -> bool:
    return bool(target) and "://" in str(target)


def mask_url(url: str | None) -> str:
    """The URL with any password (and secret-looking query values) replaced by ***."""
    if not url:
        return str(url)
    if not is_url(url):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" not in netloc and not any(_SECRET_KEYS.search(k) for k, _ in parse_qsl(parts.query)):
        return url
    if "@" in netloc:
        cred, host = netloc.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in cred else f"{user}@{host}"
    query = urlencode([(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in parse_qsl(parts.query)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def repair_journal(path: Path) -> int:
    """Cut a half-written last line (a worker SIGKILLed inside its append) off the journal; returns bytes cut.

    Optuna skips such a line when reading, but the next append would glue its record onto it and the
    study would no longer open. A complete record always ends with a newline, and appends hold Optuna's
    journal lock, so under the same lock an unterminated tail is garbage, never a write in progress.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with get_lock_file(JournalFileSymlinkLock(str(path))):
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - (1 << 20), 0))
            tail = f.read()
            if tail.endswith(b"\n"):
                return 0
            keep = size - len(tail) + tail.rfind(b"\n") + 1  # after the last complete line (0 if none)
            f.truncate(keep)
            return size - keep


class JournalFile(JournalFileBackend):
    """Optuna's journal file, whose append that fails (a full disk) leaves the journal as it was and says which
    file: a torn record at the end would make every later append unreadable. The records are Optuna's (one json
    per line), appended under Optuna's own lock."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        with get_lock_file(self._lock):
            with open(self._file_path, "ab", buffering=0) as f:
                start = f.seek(0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:  # an unbuffered write may take part of the data
                        view = view[f.write(view):]
                    os.fsync(f.fileno())
                except OSError as e:
                    f.truncate(start)
                    raise OSError(e.errno, f"{e.strerror}: cannot append to the study journal {self._file_path} "
                                           f"(its earlier records are kept, unchanged)", self._file_path) from e


def sqlalchemy_url(url: str) -> str:
    """`postgresql://` names no driver, and SQLAlchemy's default for it changed between releases
    (psycopg2 in 2.0, psycopg 3 later): pin psycopg 3, the one our `postgres` extra installs."""
    return "postgresql+psycopg://" + url[len("postgresql://"):] if url.startswith("postgresql://") else url


def make_storage(url: str | None, run_dir: Path | str, heartbeat: float | None = None,
                 max_retries: int | None = None) -> BaseStorage:
    """Journal file `run_dir/journal.log` when `url` is None (or a file path), else an RDB storage.

    A journal file is safe for many processes on one machine (file lock, append-only log). For
    workers on several machines, give every machine the same RDB URL (e.g. postgresql://...).
    `heartbeat` (seconds) turns on Optuna's RDB heartbeat for the workers: a trial with no beat for
    3 heartbeats is failed and retried (at most `max_retries` times) by whichever worker looks first.
    """
    if not is_url(url):
        # absolute: Optuna's lock is a symlink to this path, and its stale-lock check stats the link's target.
        # A relative target resolves against the link's own folder, never exists, and a lock left by a
        # worker killed while appending was then never released: every later worker waited forever.
        path = (Path(url) if url else Path(run_dir) / JOURNAL_NAME).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_journal(path)
        return JournalStorage(JournalFile(str(path)))
    engine_kwargs = {}
    if str(url).startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # many writers: wait for the lock, don't fail
    live = {}
    if heartbeat:
        interval = max(1, round(heartbeat))
        live = {"heartbeat_interval": interval, "grace_period": 3 * interval,
                "heartbeat_stale_trial_callback": RetryStale(max_retry=max_retries)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            from evolve.patient_db import PatientRDBStorage  # imports sqlalchemy: only a database needs it
            return PatientRDBStorage(sqlalchemy_url(url), engine_kwargs=engine_kwargs, **live)  # waits out a restart
    except Exception as e:  # the driver's message may echo the URL: never print it raw
        msg = str(e).replace(sqlalchemy_url(url), mask_url(url)).replace(url, mask_url(url))
        secret = urlsplit(url).password
        msg = msg.replace(secret, "***") if secret else msg
        raise RuntimeError(f"cannot open storage {mask_url(url)}: {type(e).__name__}: {msg}") from None


def describe(url: str | None, run_dir: Path | str) -> str:
    return mask_url(url) if is_url(url) else str(Path(url) if url else Path(run_dir) / JOURNAL_NAME)


def open_target(target: str, name: str | None = None) -> tuple[optuna.Study, Path]:
    """Load a study from a run dir (its journal.log) or a storage URL; returns (study, default output dir).

    With several studies in one storage, `name` picks one (required then).
    """
    if is_url(target):
        storage = make_storage(target, ".")
    else:
        path = Path(target)
        journal = path / JOURNAL_NAME if path.is_dir() else path
        if not journal.is_file():
            raise FileNotFoundError(f"no study journal at {journal} (give a run dir like runs/evolve/NAME or a storage URL)")
        storage = make_storage(str(journal), journal.parent)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is None:
        if len(names) != 1:
            raise ValueError(f"{mask_url(target)} holds studies {names}: pick one with --name")
        name = names[0]
    elif name not in names:
        raise ValueError(f"{mask_url(target)} has no study {name!r} (it has {names})")
    study = optuna.load_study(study_name=name, storage=storage)
    out = run_dir_for(name) if is_url(target) else (Path(target) if Path(target).is_dir() else Path(target).parent)
    return study, out


_LOCK_ENGINES: dict[str, object] = {}


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for the database's advisory lock of study `name`."""
    return int.from_bytes(hashlib.sha256(f"evolve-study:{name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def study_lock(url: str | None, run_dir: Path | str, name: str) -> Iterator[None]:
    """Hold the study's lock: the database's session advisory lock on PostgreSQL/MySQL (released by the
    server if this process dies), else an exclusive file lock beside a journal given as a path, or in `run_dir`
    (the run dir's own journal, SQLite: one machine); the kernel releases it if this process dies."""
    dialect = str(url).split(":", 1)[0].split("+", 1)[0] if is_url(url) else ""
    if dialect not in ("postgresql", "mysql"):
        # beside a journal given as a path (machines sharing it on a network folder share the lock), else per run dir
        path = Path(url).absolute().with_name(Path(url).name + ".claim.lock") if url and not is_url(url) else \
            Path(run_dir) / "claim.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    import sqlalchemy  # heavy: only a database's lock needs it (Optuna too imports it only for an RDB)
    engine = _LOCK_ENGINES.get(url)
    if engine is None:
        engine = _LOCK_ENGINES[url] = sqlalchemy.create_engine(sqlalchemy_url(url), poolclass=sqlalchemy.pool.NullPool)
    key = _lock_key(name)
    take, give = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)") if dialect == "postgresql" else
                  ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"))
    from evolve.patient_db import PATIENCE_S, connection_lost, patient  # with sqlalchemy, as above
    arg = {"k": key if dialect == "postgresql" else str(key)}
    conn = patient(lambda: _locked(engine, take, arg), PATIENCE_S, "taking the study lock")
    try:
        yield
    finally:
        try:
            conn.execute(sqlalchemy.text(give), arg)
        except sqlalchemy.exc.DBAPIError as e:
            if not connection_lost(e):
                raise  # a lost connection ended its session: the server released the lock with it
        finally:
            conn.close()


def _locked(engine: Any, take: str, arg: dict) -> Any:
    """A connection holding the study's advisory lock."""
    import sqlalchemy
    conn = engine.connect()
    try:
        conn.execute(sqlalchemy.text(take), arg)
    except BaseException:
        conn.close()
        raise
    return conn
