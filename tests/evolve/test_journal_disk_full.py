"""A full disk while a worker appends to the study's journal: an error that names the journal, the journal as it
was (a torn record at its end would make every later append unreadable), and the study goes on once there is
space. The full disk is injected: the append stores half of its record, then the write raises ENOSPC."""
from __future__ import annotations

import builtins
import errno

import optuna
import pytest

from evolve.storage import make_storage
from tests.helpers import disk_fills

optuna.logging.set_verbosity(optuna.logging.WARNING)


OPEN = builtins.open


def full_disk(journal):
    """open() whose files opened for appending to `journal` run out of space in their first write."""
    def opener(path, mode="r", *args, **kwargs):
        f = OPEN(path, mode, *args, **kwargs)
        return disk_fills(f) if str(path) == str(journal) and "a" in mode else f
    return opener


def test_a_full_disk_names_the_journal_and_keeps_it(tmp_path, monkeypatch):
    study = optuna.create_study(study_name="s", storage=make_storage(None, tmp_path), direction="maximize")
    study.enqueue_trial({"x": 1.0})
    journal = tmp_path / "journal.log"
    before = journal.read_bytes()
    monkeypatch.setattr(builtins, "open", full_disk(journal))
    with pytest.raises(OSError, match=r"No space left on device: cannot append to the study journal .*journal.log "
                                      r"\(its earlier records are kept, unchanged\)") as err:
        study.set_user_attr("note", "x" * 1000)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(journal)
    assert journal.read_bytes() == before
    monkeypatch.undo()  # space again: the same study appends and reads back
    study.set_user_attr("note", "ok")
    again = optuna.load_study(study_name="s", storage=make_storage(None, tmp_path))
    assert again.user_attrs == {"note": "ok"} and len(again.get_trials()) == 1
