"""`python -m prune.pipeline` SIGKILLed at a seeded moment in every stage and in its report, run again after each
kill until done: prune_results.csv (latencies aside) and channels.csv equal the uninterrupted run's, no temp file
is left, and no finished stage is redone (bench/crash_resume.py; its stress run trains for real)."""
from __future__ import annotations

from bench import crash_resume as cr
from tests.helpers import run_crash_bench


def test_a_pipeline_killed_in_every_stage_ends_as_the_uninterrupted_pipeline(tmp_path):
    result = run_crash_bench(tmp_path, "pipeline", seed=3)
    assert result["failures"] == [] and result["exact"] == 1
    assert {key.split(":")[0] for key in result["cut"]} == set(cr.PIPELINE_PHASES)
