"""Shared fixtures: a real PostgreSQL server for the storage tests (started once per session)."""
from __future__ import annotations

import os

import pytest

from tests.pg_server import PgServer, PgUnavailable


@pytest.fixture(scope="session")
def pg_server():
    """A running throwaway PostgreSQL server. In CI a missing server is an error, never a skip."""
    try:
        server = PgServer()
    except PgUnavailable as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL here: {e}")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(pg_server) -> str:
    return pg_server.url
