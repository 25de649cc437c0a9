"""A study's database may go away for a moment (a restart, a failover, a network blip): storage calls wait it out.

`PatientRDBStorage` is Optuna's RDBStorage whose calls, when the connection to the server is lost or refused,
are tried again with a growing pause for up to `patience` seconds (opening the storage is not: a wrong URL or
password, or a server down at the start, fails at once); the pool pings a connection before using it,
so the connections a restart closed are replaced rather than failing the next call. A call that fails for
another reason (a finished trial, a bad value) is not retried. After `patience` the call raises
DatabaseUnavailable: the worker stops with that message, its running trial is left RUNNING, and the next run
takes it over or retries it (evolve.ledger) - never recorded as the trial's failure (evolve.worker).

A write is tried again only after its transaction failed: PostgreSQL ends a stopped session's transaction
without committing it, so a retried write lands once (a commit acknowledged by the server in the instant its
connection closed would be the exception).
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable

import sqlalchemy.exc
from optuna.storages import RDBStorage

__all__ = ["PATIENCE_S", "DatabaseUnavailable", "PatientRDBStorage", "connection_lost", "patient"]

LOGGER = logging.getLogger(__name__)
PATIENCE_S = 120.0


class DatabaseUnavailable(RuntimeError):
    """The study's database did not answer within the patience."""


def connection_lost(e: BaseException | None) -> bool:
    """Is `e` (or an exception it was raised from) a lost or refused connection to the database server?"""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or \
                (isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated):
            return True
        if type(e).__name__ in ("OperationalError", "InterfaceError") and \
                type(e).__module__.split(".")[0] in ("psycopg", "psycopg2", "pymysql", "MySQLdb"):
            return True
        e = e.__cause__ or e.__context__
    return False


def patient(call: Callable[..., Any], patience: float, what: str, reset: Callable[[], None] | None = None) -> Any:
    """call(), tried again while the database is unreachable, for up to `patience` seconds; `reset()` before each
    new try (a session whose connection died refuses every later statement until it is rolled back)."""
    give_up, pause, warned = time.monotonic() + patience, 0.2, False
    while True:
        try:
            return call()
        except Exception as e:
            if not connection_lost(e):
                raise
            if time.monotonic() > give_up:
                raise DatabaseUnavailable(f"the study's database did not answer for {patience:.0f} s ({what}: "
                                          f"{type(e).__name__}); run the same command again once it is back: "
                                          f"running trials are taken over or retried") from e
            if not warned:
                LOGGER.warning(f"the study's database is unreachable ({what}); trying again for up to "
                               f"{patience:.0f} s")
                warned = True
            time.sleep(pause)
            pause = min(2 * pause, 5.0)
            if reset is not None:
                try:
                    reset()
                except Exception as e2:  # the old session's cleanup on a dead connection: nothing left to undo
                    LOGGER.debug(f"session reset: {type(e2).__name__}: {e2}")


class PatientRDBStorage(RDBStorage):
    """RDBStorage whose calls wait out a database restart (module docstring)."""

    patience = PATIENCE_S

    def __init__(self, url: str, engine_kwargs: dict | None = None, **kwargs: Any) -> None:
        # Opened at once or not at all: a wrong URL or password, or a server that is down when the command
        # starts, is an error to show now (evolve.storage.make_storage), not a restart to wait out.
        super().__init__(url, engine_kwargs={"pool_pre_ping": True, **(engine_kwargs or {})}, **kwargs)


def _patient_method(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return patient(lambda: method(self, *args, **kwargs), self.patience, name, self.scoped_session.remove)
    return call


for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
              "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
              "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
              "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials", "get_best_trial",
              "record_heartbeat", "get_trial_user_attrs", "get_trial_system_attrs",
              # what Optuna's cache in front of an RDB storage calls (_CachedStorage)
              "_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param", "_get_stale_trial_ids"):
    if hasattr(RDBStorage, _name):
        setattr(PatientRDBStorage, _name, _patient_method(_name))
