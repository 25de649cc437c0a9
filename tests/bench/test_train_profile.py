"""bench.train_profile times the real trainer through its phase hooks: the phases add up to the epoch, the
trainer's numbers do not change under the hooks, and the table is recorded where it is told."""
import json

import pytest

from bench.record import RESULTS
from bench.train_profile import format_profile, main, profile, train_options
from core.callbacks import PHASES
from core.train import fit
from tests.helpers import MODEL

# What the epoch spends outside the timed phases (lr warmup, loss sums, scheduler, logging, the callbacks
# themselves): a few ms; 10% of a 2-batch epoch leaves room for a loaded 2-core host.
UNTIMED_SHARE = 0.10


def _no_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]


@pytest.mark.slow
def test_profile_times_the_trainers_own_phases_and_records_where_told(tiny_data, tmp_path):
    committed = RESULTS / "train_profile.md"
    before = committed.read_text() if committed.exists() else None
    out = tmp_path / "profile.json"
    assert main(["--data", tiny_data, "--model", MODEL, "--imgsz", "64", "--batch-size", "8", "--workers", "0",
                 "--threads", "1", "--batches", "2", "--warmup", "1", "--out", str(out),
                 "--results", str(tmp_path / "results")]) == 0
    r = json.loads(out.read_text())
    assert r["train_batches"] == 2 and r["train_images"] == 16 and r["optimizer_steps"] >= 1
    assert all(r["epoch_train_s"][k] > 0 for k in ("data", "forward", "loss", "backward", "optimizer"))
    assert r["validate_s"] > 0 and r["checkpoint_s"] > 0 and r["val_images"] == 8
    # the phases add up to the epoch: never more than its wall time, and all of it but a small untimed rest
    assert 0 <= r["other_s"] <= UNTIMED_SHARE * r["epoch_s"], r
    assert abs(r["phases_s"] + r["other_s"] - r["epoch_s"]) < 1e-9
    train_phases = sum(r["epoch_train_s"].values())
    largest = max([*r["epoch_train_s"].values(), r["validate_s"], r["checkpoint_s"], r["pictures_s"]])
    assert r["other_s"] + largest > UNTIMED_SHARE * r["epoch_s"]  # control: had its largest phase gone untimed
    # inside the trainer's own clock of its training pass, and most of it
    # (the first epoch also draws train_batch*.jpg inside that pass: the pictures phase)
    assert (1 - UNTIMED_SHARE) * r["train_s"] <= train_phases + r["pictures_s"] and train_phases <= r["train_s"]
    assert sum(r["val_split_s"].values()) == pytest.approx(r["validate_s"])
    # recorded into the folder it was given, never into the repository's bench/results
    recorded = (tmp_path / "results" / "train_profile.md").read_text()
    assert "python -m bench.train_profile" in recorded and "| train forward |" in recorded
    assert (committed.read_text() if committed.exists() else None) == before
    text = format_profile(r)
    for phase in ("train data wait", "train optimizer+EMA", "val inference", "val loss+NMS", "checkpoints", "pictures", "other"):
        assert f"| {phase}" in text


def test_every_phase_the_profile_reads_is_one_the_trainer_names():
    from bench.train_profile import TRAIN_PHASES
    assert set(TRAIN_PHASES) | {"validation", "checkpoint", "pictures"} == set(PHASES)


@pytest.mark.slow
def test_profiling_leaves_the_training_unchanged(tiny_data, tmp_path):
    """Same seed with and without the hooks: the same losses and metrics, bit for bit (control: another seed
    differs, so the comparison can fail)."""
    r = profile(tiny_data, MODEL, 64, 8, 0, 0, 1, 1, ckpt_dir=tmp_path / "profile", epochs=2, seed=3)
    plain = fit(tiny_data, MODEL, None, train_options(64, 8, 0, 1, epochs=2, seed=3, project=tmp_path / "plain"))
    assert len(plain.history) == 2 and _no_seconds(r["history"]) == _no_seconds(plain.history)
    other = fit(tiny_data, MODEL, None, train_options(64, 8, 0, 1, epochs=2, seed=4, project=tmp_path / "other"))
    assert _no_seconds(other.history) != _no_seconds(plain.history)
