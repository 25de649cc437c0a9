"""Every bench test records into its own tmp folder: no test writes bench/results/ or README.md's headline."""
import pytest

import bench.record


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    """bench.record.RESULTS -> tmp_path/results (record() without `results=` writes there)."""
    folder = tmp_path / "results"
    monkeypatch.setattr(bench.record, "RESULTS", folder)
    return folder
