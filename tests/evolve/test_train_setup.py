"""How a study's runs train (evolve/train_setup.py): the policy every trial, base run and retrain shares."""
from __future__ import annotations

import torch

from evolve.train_setup import search_train_options


def test_runs_of_a_study_pin_this_process_threads_unless_the_study_names_them(cfg_for):
    """Auto threads (0) follow the machine's load, and a thread count changes float sums: a retrain redone or
    resumed on a busier machine would not give the same numbers."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        opts = search_train_options(cfg_for("t"), epochs=1, seed=0, device="cpu", project=".", name="x", save=False)
        assert opts.threads == 1
        torch.set_num_threads(2)
        opts = search_train_options(cfg_for("t"), epochs=1, seed=0, device="cpu", project=".", name="x", save=False)
        assert opts.threads == 2
        named = cfg_for("t", train={"optimizer": "AdamW", "threads": 3})
        assert search_train_options(named, epochs=1, seed=0, device="cpu", project=".", name="x", save=False).threads == 3
    finally:
        torch.set_num_threads(before)
