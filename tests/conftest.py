"""Shared fixtures: a tiny generated dataset, a study config factory for the orchestration tests, and a real PostgreSQL server
for the storage tests (started once per session)."""
from __future__ import annotations

import os

import pytest

from core.digest import CODE_VERSION_ENV, code_version
from tests.helpers import MEDIUM_SHAPES, REPO, SHAPE_NAMES, synthetic_yaml
from tests.pg_server import PgServer


@pytest.fixture(scope="session", autouse=True)
def pinned_code_version():
    """Cache keys carry the code version (core.digest): pinned for the session, so that a commit made in this tree
    while a test reruns a command in a fresh process does not look like other code."""
    os.environ.setdefault(CODE_VERSION_ENV, code_version())


@pytest.fixture
def cfg_for(tmp_path, monkeypatch):
    """cfg_for(name, **overrides): the quick study's orchestration without its base run and noise seeds
    (those are tested in tests/evolve/test_signal.py), on a data yaml that preflight only checks exists."""
    from evolve.study_config import load_study
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    data = tmp_path / "data.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
    (tmp_path / "images").mkdir()

    def make(name: str, **kw):
        return load_study(REPO / "studies" / "quick.yaml", {"name": name, "data": str(data), "base": {},
                                                            "noise_seeds": 0, **kw})
    return make


@pytest.fixture(scope="session")
def pg_server():
    """A running throwaway PostgreSQL server (installed with apt-get by root when missing). Where none can be
    had, the database tests error with the reason (PgUnavailable): they are never skipped."""
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(pg_server) -> str:
    return pg_server.url




@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A generated 6-class shapes set of 32 train / 8 val images, one per test module."""
    return synthetic_yaml(tmp_path_factory.mktemp("tiny"), "tiny", SHAPE_NAMES,
                          "seed: 1, n_train: 32, n_val: 8, imgsz: 96")


@pytest.fixture(scope="module")
def medium_data(tmp_path_factory):
    """Objects of 20-55 px on 96: AutoMosaic halves the quick study's base hyp's mosaic here (factor ~0.52)."""
    return synthetic_yaml(tmp_path_factory.mktemp("medium"), "medium", SHAPE_NAMES, MEDIUM_SHAPES)
